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

import yaml

from shared.application.manifests import in_dependency_order, object_problems
from shared.domain.catalog_objects import CatalogObject


class ManifestError(ValueError):
    """One or more manifest documents are invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_documents(text: str, source: str) -> list[CatalogObject]:
    """Validate every document of a manifest; raise :class:`ManifestError` listing all problems."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError([f"{source}: not valid YAML: {exc}"]) from None
    objects, problems = object_problems(documents, source)
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
    return in_dependency_order(objects)
