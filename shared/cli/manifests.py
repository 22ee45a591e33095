"""Read catalog objects from YAML manifests, naming the file, the object and the field of any error.

A manifest holds one or more YAML documents, each ``{kind: <Kind>, spec: {...}}`` with the object's
``name`` inside ``spec`` (or beside ``kind``)::

    kind: ConnectionProfile
    name: partner-api
    spec:
      base_url: https://partner.example.com
      auth: {type: bearer, token: "env:PARTNER_TOKEN"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.domain.catalog_objects import KINDS, CatalogObject


class ManifestError(ValueError):
    """One or more manifest documents are invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _describe(source: str, index: int, kind: str | None, name: Any) -> str:
    what = f"{kind} '{name}'" if kind and name else (kind or "object")
    return f"{source}: document {index + 1} ({what})"


def parse_documents(text: str, source: str) -> list[CatalogObject]:
    """Validate every document of a manifest; raise :class:`ManifestError` listing all problems."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError([f"{source}: not valid YAML: {exc}"]) from None
    objects: list[CatalogObject] = []
    problems: list[str] = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            problems.append(f"{source}: document {index + 1}: expected a mapping with 'kind' and 'spec'")
            continue
        kind = document.get("kind")
        spec = dict(document.get("spec") or {})
        if "name" in document:
            spec.setdefault("name", document["name"])
        where = _describe(source, index, kind if isinstance(kind, str) else None, spec.get("name"))
        unknown = set(document) - {"kind", "name", "spec"}
        if unknown:
            problems.append(f"{where}: unknown top-level field(s) {', '.join(sorted(unknown))}")
            continue
        model = KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            problems.append(f"{where}: kind must be one of {', '.join(KINDS)}")
            continue
        try:
            objects.append(model.model_validate(spec))
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                field = ".".join(str(part) for part in error["loc"]) or "spec"
                problems.append(f"{where}: field '{field}': {error['msg']}")
    if problems:
        raise ManifestError(problems)
    return objects


def load_manifests(paths: list[Path]) -> list[CatalogObject]:
    """All objects of all files, in an order that applies dependencies first."""
    objects: list[CatalogObject] = []
    problems: list[str] = []
    for path in paths:
        try:
            objects.extend(parse_documents(path.read_text(), str(path)))
        except ManifestError as exc:
            problems.extend(exc.problems)
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror})")
    if problems:
        raise ManifestError(problems)
    order = list(KINDS)
    return sorted(objects, key=lambda obj: order.index(type(obj).__name__))
