"""The save-time rule of a saved query's dependents: a query saved (a parameter's type changed, a parameter removed,
a column no longer returned) still fits the definitions stored on it, else the save is refused naming each that it
would break and why (a :class:`~shared.application.errors.Conflict`, ``in-use``, as a delete of an object in use),
in the words a definition's own save uses (:func:`~shared.domain.catalog_objects.fit_problems`). A definition
written in the same set (``POST /apply``, ``exportctl apply``) is checked against the new query as it is written
instead. Bounded: nothing read when nothing its definitions may rely on changed; else the definitions on the query
read as stored in one indexed query (their JSON: none validated), and only the values that changed judged."""

from __future__ import annotations

from typing import Any

from shared.application.errors import Conflict
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import CatalogObject, ExportDefinition, SavedQuery, fit_problems

#: How many broken definitions a refusal names at most (the others counted): its message stays readable.
NAMED_AT_MOST = 20


def refuse_breaking_queries(objects: list[CatalogObject], store: DefinitionsStore) -> None:
    """:class:`Conflict` naming the stored definitions a saved query of ``objects`` (columns discovered) would
    break, unless ``objects`` writes them too."""
    written = {obj.name for obj in objects if isinstance(obj, ExportDefinition)}
    problems = [p for obj in objects if isinstance(obj, SavedQuery) for p in broken_definitions(obj, store, written)]
    if problems:
        raise Conflict(problems, slug="in-use")


def broken_definitions(query: SavedQuery, store: DefinitionsStore, written: set[str]) -> list[str]:
    """One line per problem of a stored definition on ``query`` (but ``written``) that ``query`` would no longer
    fit, at most :data:`NAMED_AT_MOST`, then how many more; and what to do."""
    old = store.find(SavedQuery, query.name)
    if old is None:
        return []
    changed = {
        name
        for name, declared in old.parameters.items()
        if name not in query.parameters or query.parameters[name].type != declared.type
    }
    dropped = set(old.columns) - set(query.columns) if query.columns else set()
    if not changed and not dropped:
        return []
    broken = [
        f"ExportDefinition '{name}': {problem}"
        for name, spec in store.definitions_on_query(query.name)
        if name not in written
        for problem in _problems(spec, changed, dropped, query)
    ]
    if not broken:
        return []
    lines = [f"SavedQuery '{query.name}' would break {line}" for line in broken[:NAMED_AT_MOST]]
    if (more := len(broken) - NAMED_AT_MOST) > 0:
        lines.append(f"SavedQuery '{query.name}' would break {more} more definition field(s)")
    return [*lines, f"SavedQuery '{query.name}': mend those definitions first, or apply them with it in one set"]


def _problems(spec: dict[str, Any], changed: set[str], dropped: set[str], query: SavedQuery) -> list[str]:
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
