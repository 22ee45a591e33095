"""Catalog objects from documents ``{kind, spec}`` (exportctl's manifests, the admin API's apply), every
problem naming the document, the object and the field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.application.errors import Invalid
from shared.domain.catalog_objects import KINDS, CatalogObject


def _describe(source: str, index: int, kind: str | None, name: Any) -> str:
    what = f"{kind} '{name}'" if kind and name else (kind or "object")
    return f"{source}: document {index + 1} ({what})"


def object_problems(documents: list[Any], source: str) -> tuple[list[CatalogObject], list[str]]:
    """The valid objects of ``documents`` and one line per problem of the others."""
    objects: list[CatalogObject] = []
    problems: list[str] = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            problems.append(f"{source}: document {index + 1}: expected a mapping with 'kind' and 'spec'")
            continue
        kind = document.get("kind")
        given = document.get("spec") or {}
        if not isinstance(given, dict):
            problems.append(f"{source}: document {index + 1}: 'spec' must be a mapping of the object's fields")
            continue
        spec = dict(given)
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
    return objects, problems


def in_dependency_order(objects: list[CatalogObject]) -> list[CatalogObject]:
    """Profiles, then queries and templates, then definitions: what is referred to comes first."""
    order = list(KINDS)
    return sorted(objects, key=lambda obj: order.index(type(obj).__name__))


def parse_object_documents(documents: list[Any], source: str) -> list[CatalogObject]:
    """Every document's object, in dependency order; :class:`Invalid` listing every problem."""
    objects, problems = object_problems(documents, source)
    if problems:
        raise Invalid(problems, slug="invalid-object")
    return in_dependency_order(objects)
