"""The save-time rule of a saved query's dependents: a query saved (a parameter's type changed, a parameter removed,
a parameter newly required without default, a column no longer returned) still fits the definitions and templates
stored on it, else the save is refused naming each problem it would cause (a
:class:`~shared.application.errors.Conflict`, ``in-use``, as a delete of an object in use), in the words their own
save uses (:func:`~shared.domain.catalog_objects.fit_problems`, :func:`columns_problems`): a definition's values
and watermark, the columns of the templates on the query, and the columns of a definition's templates on another
query (a definition's template is checked against the definition's query, whichever query the template is on). An
object written in the same set (``POST /apply``, ``exportctl apply``) is checked against the new query as it is
written instead. Bounded: nothing read when nothing they may rely on changed; else only the fields of the
definitions on the query that the check reads (their JSON paths, one indexed query; no definition validated), the
templates on it (a column dropped) and those their definitions name on other queries, and only what changed
judged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.application.errors import Conflict
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import (
    CatalogObject,
    ExportDefinition,
    HttpTemplate,
    SavedQuery,
    fit_problems,
    runs_unattended,
)
from shared.domain.query_parameters import unset_required
from shared.domain.sync_mode import SyncMode
from shared.domain.template_columns import used_columns
from shared.errors import StoredObjectInvalid

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
    written: dict[tuple[type, str], CatalogObject] = {(type(obj), obj.name): obj for obj in objects}
    problems = [p for obj in objects if isinstance(obj, SavedQuery) for p in broken_dependents(obj, store, written)]
    if problems:
        raise Conflict(problems, slug="in-use")


def broken_dependents(
    query: SavedQuery, store: DefinitionsStore, written: Mapping[tuple[type, str], CatalogObject]
) -> list[str]:
    """One line per problem of a stored definition or template on ``query`` (but those ``written``) that ``query``
    would cause, at most :data:`NAMED_AT_MOST`, then how many more; and what to do."""
    old = store.find(SavedQuery, query.name)
    if old is None:
        return []
    changed = {
        name
        for name, declared in old.parameters.items()
        if name not in query.parameters or query.parameters[name].type != declared.type
    }
    needed = set(unset_required(query.parameters)) - set(unset_required(old.parameters))
    dropped = set(old.columns) - set(query.columns) if query.columns else set()
    broken = []
    if changed or needed or dropped:
        definitions = store.on_query(ExportDefinition, query.name, DEFINITION_FIELDS)
        templates = _Templates(store, written)
        broken += [
            f"ExportDefinition '{name}': {problem}"
            for name, spec in definitions
            if (ExportDefinition, name) not in written
            for problem in _definition_problems(spec, changed, needed, dropped, query)
            + (_template_columns(spec, query, templates) if dropped else [])
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


#: The fields of a stored definition a query's save reads (nothing else of it: :meth:`DefinitionsStore.on_query`).
DEFINITION_FIELDS = ("parameters", "incremental", "schedule", "template", "sync")


def _definition_problems(
    spec: dict[str, Any], changed: set[str], needed: set[str], dropped: set[str], query: SavedQuery
) -> list[str]:
    """What in a stored definition (``spec``, its JSON) relying on a ``changed`` parameter, a parameter ``needed``
    now (required without default, when it runs unattended) or a ``dropped`` column does not fit ``query``."""
    parameters = spec.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    relied = {k: v for k, v in parameters.items() if k in changed}
    unset = (
        sorted(name for name in needed if parameters.get(name) is None) if runs_unattended(spec.get("schedule")) else []
    )
    incremental = spec.get("incremental")
    watermark = incremental.get("watermark_column") if isinstance(incremental, dict) else None
    watermark = watermark if isinstance(watermark, str) and watermark in dropped else None
    if not relied and not unset and watermark is None:
        return []
    # Stored values are judged as a run binds them (as saved: shared.domain.query_parameters.coerce).
    return fit_problems(relied, watermark, query, unset, stored=True)


class _Templates:
    """The templates a query's save judges the definitions' with: as written in the same set, else as stored (each
    read once; None: none such, or one stored that no longer validates: its own save says why)."""

    def __init__(self, store: DefinitionsStore, written: Mapping[tuple[type, str], CatalogObject]) -> None:
        self.store, self.written = store, written
        self.read: dict[str, HttpTemplate | None] = {}

    def __call__(self, name: str) -> HttpTemplate | None:
        found = self.written.get((HttpTemplate, name))
        if isinstance(found, HttpTemplate):
            return found
        if name not in self.read:
            try:
                self.read[name] = self.store.find(HttpTemplate, name)
            except StoredObjectInvalid:
                self.read[name] = None
        return self.read[name]


def _template_columns(spec: dict[str, Any], query: SavedQuery, templates: _Templates) -> list[str]:
    """The columns ``query`` no longer returns that a stored definition's templates (``template``, a change-mode
    ``sync``'s per kind) use, of those on another query (a template on ``query`` is judged as a template): what the
    definition's own save says of them (:func:`~shared.application.checks.definition_problems`)."""
    named = [(spec.get("template"), "template")]
    sync = spec.get("sync")
    if isinstance(sync, dict) and sync.get("mode") == SyncMode.CHANGES:
        named += [(sync.get(kind), f"sync.{kind}") for kind in ("added", "changed", "removed")]
    problems = []
    for name, field in named:
        template = templates(name) if isinstance(name, str) else None
        if template is not None and template.query != query.name:
            problems += columns_problems(template, query, f"field '{field}'")
    return problems


def _template_problems(spec: dict[str, Any], query: SavedQuery) -> list[str]:
    """The columns a stored template (``spec``) uses that ``query`` no longer returns (none said of one stored that
    no longer validates: its own save says why)."""
    try:
        template = HttpTemplate.model_validate(spec)
    except ValidationError:
        return []
    return columns_problems(template, query, f"HttpTemplate '{template.name}': field 'query'")
