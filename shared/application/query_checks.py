"""The save-time rule of a saved query's dependents: a query saved (a parameter's type changed, a parameter removed,
a column no longer returned) still fits the definitions and templates stored on it, else the save is refused naming
each problem it would cause (a :class:`~shared.application.errors.Conflict`, ``in-use``, as a delete of an object
in use), in the words their own save uses (:func:`~shared.domain.catalog_objects.fit_problems`,
:func:`columns_problems`). An object written in the same set (``POST /apply``, ``exportctl apply``) is checked
against the new query as it is written instead. Bounded: nothing read when nothing they may rely on changed; else
the objects on the query read as stored (their JSON, one indexed query per kind; no definition validated), and only
what changed judged."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.application.errors import Conflict
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import CatalogObject, ExportDefinition, HttpTemplate, SavedQuery, fit_problems
from shared.domain.template_columns import used_columns

#: How many problems a refusal names at most (the others counted): its message stays readable.
NAMED_AT_MOST = 20


def columns_problems(template: HttpTemplate, query: SavedQuery, at: str) -> list[str]:
    """A template that uses columns its query does not return (known once the query's columns are discovered)."""
    if not query.columns:
        return []
    missing = sorted(used_columns(template) - set(query.columns))
    if not missing:
        return []
    return [
        f"{at}: template '{template.name}' uses column(s) {', '.join(missing)} that query "
        f"'{query.name}' does not return (it returns: {', '.join(query.columns)})"
    ]


def refuse_breaking_queries(objects: list[CatalogObject], store: DefinitionsStore) -> None:
    """:class:`Conflict` naming what a saved query of ``objects`` (columns discovered) would break in the definitions
    and templates stored on it, unless ``objects`` writes them too."""
    written = {(type(obj), obj.name) for obj in objects}
    problems = [p for obj in objects if isinstance(obj, SavedQuery) for p in broken_dependents(obj, store, written)]
    if problems:
        raise Conflict(problems, slug="in-use")


def broken_dependents(
    query: SavedQuery, store: DefinitionsStore, written: set[tuple[type[CatalogObject], str]]
) -> list[str]:
    """One line per problem of a stored definition or template on ``query`` (but ``written``) that ``query`` would
    cause, at most :data:`NAMED_AT_MOST`, then how many more; and what to do."""
    old = store.find(SavedQuery, query.name)
    if old is None:
        return []
    changed = {
        name
        for name, declared in old.parameters.items()
        if name not in query.parameters or query.parameters[name].type != declared.type
    }
    dropped = set(old.columns) - set(query.columns) if query.columns else set()
    broken = []
    if changed or dropped:
        broken += [
            f"ExportDefinition '{name}': {problem}"
            for name, spec in store.on_query(ExportDefinition, query.name)
            if (ExportDefinition, name) not in written
            for problem in _definition_problems(spec, changed, dropped, query)
        ]
    if dropped:
        broken += [
            problem
            for name, spec in store.on_query(HttpTemplate, query.name)
            if (HttpTemplate, name) not in written
            for problem in _template_problems(spec, query)
        ]
    if not broken:
        return []
    lines = [f"SavedQuery '{query.name}' would break {line}" for line in broken[:NAMED_AT_MOST]]
    if (more := len(broken) - NAMED_AT_MOST) > 0:
        lines.append(f"SavedQuery '{query.name}' would break {more} more field(s)")
    return [*lines, f"SavedQuery '{query.name}': mend those first, or apply them with it in one set"]


def _definition_problems(spec: dict[str, Any], changed: set[str], dropped: set[str], query: SavedQuery) -> list[str]:
    """What in a stored definition (``spec``, its JSON) relying on a ``changed`` parameter or a ``dropped`` column
    does not fit ``query``."""
    parameters = spec.get("parameters")
    relied = {k: v for k, v in parameters.items() if k in changed} if isinstance(parameters, dict) else {}
    incremental = spec.get("incremental")
    watermark = incremental.get("watermark_column") if isinstance(incremental, dict) else None
    watermark = watermark if isinstance(watermark, str) and watermark in dropped else None
    if not relied and watermark is None:
        return []
    return fit_problems(relied, watermark, query)


def _template_problems(spec: dict[str, Any], query: SavedQuery) -> list[str]:
    """The columns a stored template (``spec``) uses that ``query`` no longer returns (none said of one stored that
    no longer validates: its own save says why)."""
    try:
        template = HttpTemplate.model_validate(spec)
    except ValidationError:
        return []
    return columns_problems(template, query, f"HttpTemplate '{template.name}': field 'query'")
