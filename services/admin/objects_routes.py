"""Routes of the catalog objects: CRUD and copy for all four kinds; search and the four steps of definitions.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations at
registration, and those of the generic routes name the kind of a closure.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from services.admin.app import AdminContext, context_of, requires
from services.admin.bearer_tokens import Permission, Principal
from services.admin.problems import ApiProblem, problem_responses
from shared.application.masked_secrets import keep_masked_secrets
from shared.catalog import NotFound
from shared.domain.catalog_objects import (
    KINDS,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    Incremental,
    Notifications,
    Priority,
    SavedQuery,
    query_consistency_problems,
    references,
    stored_form,
)
from shared.domain.names import Name, slugify
from shared.domain.schedule import Schedule, next_fire_times
from shared.domain.template_columns import used_columns

T = TypeVar("T", bound=CatalogObject)
router = APIRouter()
Context = Annotated[AdminContext, Depends(context_of)]
Reader = Annotated[Principal, Depends(requires(Permission.READ))]
Editor = Annotated[Principal, Depends(requires(Permission.WRITE))]
ProfileEditor = Annotated[Principal, Depends(requires(Permission.WRITE_PROFILES))]

COLLECTIONS: dict[type[Any], str] = {
    ConnectionProfile: "connection-profiles",
    HttpTemplate: "http-templates",
    SavedQuery: "saved-queries",
    ExportDefinition: "export-definitions",
}


def _input_model(kind: type[Any]) -> type[BaseModel]:
    """The kind as a request body: ``name`` optional (derived from ``label`` when absent)."""
    model: type[BaseModel] = create_model(
        f"{kind.__name__}Input",
        __base__=kind,
        __doc__=f"{kind.__doc__}\n\nWithout `name`, the name derives from `label` (a unique slug).",
        name=(Name | None, None),
    )
    return model


class CopyRequest(BaseModel):
    """How to name a copy (both optional: "Copy of <label>" and its slug)."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, max_length=200)
    name: Name | None = None


# --- shared helpers -----------------------------------------------------------------------------------


def _get(context: AdminContext, kind: type[T], name: str) -> T:
    try:
        return context.catalog.get(kind, name)
    except NotFound as exc:
        raise ApiProblem(404, str(exc), slug="not-found") from None


def _refuse_taken(context: AdminContext, kind: type[Any], name: str) -> None:
    """409 when an object of ``kind`` is named ``name`` already."""
    try:
        context.catalog.get(kind, name)
    except NotFound:
        return
    raise ApiProblem(409, f"{kind.__name__} '{name}' exists already", slug="name-conflict")


def _unique_name(context: AdminContext, kind: type[Any], base: str) -> str:
    taken = {obj.name for obj in context.catalog.list_objects(kind)}
    if base not in taken:
        return base
    stem = base[:95].rstrip("-")
    return next(f"{stem}-{n}" for n in range(2, 10_000) if f"{stem}-{n}" not in taken)


def _named(context: AdminContext, kind: type[T], body: dict[str, Any], old: T | None = None) -> T:
    """The object of ``body``: its name given, kept, or derived from its label; masked secrets kept."""
    if not body.get("name"):
        if old is not None:
            body["name"] = old.name
        elif body.get("label"):
            body["name"] = _unique_name(context, kind, slugify(str(body["label"])))
        else:
            raise ApiProblem(422, "name: give a name or a label to derive it from", slug="invalid-object")
    obj: T = kind.model_validate(keep_masked_secrets(body, old))  # type: ignore[assignment]
    return obj


def _check_references(context: AdminContext, obj: CatalogObject) -> None:
    """Referenced objects exist, and a definition fits its query and template (422 naming the field)."""
    problems = []
    found: dict[str, CatalogObject] = {}
    for kind, name, field in references(obj):
        try:
            found[field] = context.catalog.get(kind, name)
        except NotFound:
            problems.append(f"field '{field}': {kind.__name__} '{name}' does not exist")
    if isinstance(obj, ExportDefinition) and not problems:
        query, template = found["query"], found["template"]
        assert isinstance(query, SavedQuery)
        assert isinstance(template, HttpTemplate)
        problems += query_consistency_problems(obj, query)
        problems += _destination_problems(template, query)
    if problems:
        raise ApiProblem(422, "; ".join(problems), slug="invalid-reference")


def _destination_problems(template: HttpTemplate, query: SavedQuery) -> list[str]:
    """A template that uses columns its query does not return (known once the query's columns are discovered)."""
    if not query.columns:
        return []
    missing = sorted(used_columns(template) - set(query.columns))
    if not missing:
        return []
    return [
        f"field 'template': template '{template.name}' uses column(s) {', '.join(missing)} that query "
        f"'{query.name}' does not return (it returns: {', '.join(query.columns)})"
    ]


def _referrers(context: AdminContext, obj: CatalogObject) -> list[str]:
    """Objects that refer to ``obj`` (which may therefore not be deleted or renamed)."""
    found = []
    for kind in KINDS.values():
        for other in context.catalog.list_objects(kind):
            if any(k is type(obj) and n == obj.name for k, n, _ in references(other)):
                found.append(f"{kind.__name__} '{other.name}'")
    return found


def _in_scope(caller: Principal, obj: CatalogObject) -> None:
    if isinstance(obj, ExportDefinition) and not caller.sees(obj.business_unit):
        raise ApiProblem(
            403, f"definition '{obj.name}' belongs to a business unit outside this token's scope", slug="out-of-scope"
        )


def _create(context: AdminContext, caller: Principal, kind: type[T], body: dict[str, Any]) -> T:
    explicit = body.get("name")
    obj = _named(context, kind, body)
    _in_scope(caller, obj)
    if explicit:
        _refuse_taken(context, kind, obj.name)
    _check_references(context, obj)
    context.catalog.apply(obj)
    return obj


def _replace(context: AdminContext, caller: Principal, kind: type[T], name: str, body: dict[str, Any]) -> T:
    old = _get(context, kind, name)
    _in_scope(caller, old)
    obj = _named(context, kind, body, old)
    _in_scope(caller, obj)
    _check_references(context, obj)
    if obj.name != old.name:
        _refuse_taken(context, kind, obj.name)
        if referrers := _referrers(context, old):
            raise ApiProblem(
                409, f"'{old.name}' is used by {', '.join(referrers)}: it cannot be renamed", slug="in-use"
            )
        context.catalog.rename(old.name, obj)
    else:
        context.catalog.apply(obj)
    return obj


def _delete(context: AdminContext, caller: Principal, kind: type[Any], name: str) -> None:
    obj = _get(context, kind, name)
    _in_scope(caller, obj)
    if referrers := _referrers(context, obj):
        raise ApiProblem(409, f"'{name}' is used by {', '.join(referrers)}: delete those first", slug="in-use")
    context.catalog.delete(kind, name)


def _copy(context: AdminContext, caller: Principal, kind: type[T], name: str, request: CopyRequest | None) -> T:
    original = _get(context, kind, name)
    _in_scope(caller, original)
    request = request or CopyRequest()
    label = request.label or f"Copy of {getattr(original, 'label', None) or original.name}"
    if request.name:
        new_name = request.name
        _refuse_taken(context, kind, new_name)
    else:
        new_name = _unique_name(context, kind, slugify(label))
    spec = stored_form(original) | {"name": new_name, "label": label}
    if isinstance(original, ExportDefinition):
        spec["schedule"] = original.schedule.model_copy(update={"enabled": False}).model_dump(mode="json")
    copy: T = kind.model_validate(spec)  # type: ignore[assignment]
    context.catalog.apply(copy)
    return copy


# --- routes of profiles, templates and queries (one shape) -------------------------------------------


def _register(kind: type[T], writer: Any) -> None:
    collection = COLLECTIONS[kind]
    body_model = _input_model(kind)
    tag = kind.__name__
    errors = problem_responses(404, 409, 422)

    if kind is not ExportDefinition:  # definitions are listed by their search

        @router.get(f"/{collection}", tags=[tag], summary=f"List {collection}", operation_id=f"list_{kind.__name__}")
        def list_all(context: Context, caller: Reader) -> list[kind]:  # type: ignore[valid-type]
            return context.catalog.list_objects(kind)

    @router.post(
        f"/{collection}",
        status_code=201,
        tags=[tag],
        summary=f"Create a {kind.__name__}",
        responses=errors,
        operation_id=f"create_{kind.__name__}",
    )
    def create(context: Context, caller: writer, body: Annotated[body_model, Body()]) -> kind:  # type: ignore[valid-type]
        return _create(context, caller, kind, body.model_dump(mode="python", exclude_unset=True))  # type: ignore[attr-defined]

    @router.get(
        f"/{collection}/{{name}}",
        tags=[tag],
        summary=f"Read a {kind.__name__}",
        responses=errors,
        operation_id=f"read_{kind.__name__}",
    )
    def read(context: Context, caller: Reader, name: str) -> kind:  # type: ignore[valid-type]
        obj = _get(context, kind, name)
        _in_scope(caller, obj)
        return obj

    @router.put(
        f"/{collection}/{{name}}",
        tags=[tag],
        summary=f"Replace a {kind.__name__} (a different name in the body renames it)",
        responses=errors,
        operation_id=f"replace_{kind.__name__}",
    )
    def replace(context: Context, caller: writer, name: str, body: Annotated[body_model, Body()]) -> kind:  # type: ignore[valid-type]
        return _replace(context, caller, kind, name, body.model_dump(mode="python", exclude_unset=True))  # type: ignore[attr-defined]

    @router.delete(
        f"/{collection}/{{name}}",
        status_code=204,
        tags=[tag],
        summary=f"Delete a {kind.__name__}",
        responses=errors,
        operation_id=f"delete_{kind.__name__}",
    )
    def delete(context: Context, caller: writer, name: str) -> Response:
        _delete(context, caller, kind, name)
        return Response(status_code=204)

    @router.post(
        f"/{collection}/{{name}}/copy",
        status_code=201,
        tags=[tag],
        summary=f'Copy a {kind.__name__} ("Copy of …"{"; schedule disabled" if kind is ExportDefinition else ""})',
        responses=errors,
        operation_id=f"copy_{kind.__name__}",
    )
    def copy(context: Context, caller: writer, name: str, body: Annotated[CopyRequest | None, Body()] = None) -> kind:  # type: ignore[valid-type]
        return _copy(context, caller, kind, name, body)


# Definitions: the search comes before the generic routes so that GET /export-definitions is the search.


class DefinitionPage(BaseModel):
    """One page of a definition search."""

    items: list[ExportDefinition]
    total: int
    page: int
    page_size: int


@router.get(
    "/export-definitions",
    tags=["ExportDefinition"],
    summary="Search export definitions (paginated, sorted)",
    operation_id="search_ExportDefinition",
)
def search_definitions(
    context: Context,
    caller: Reader,
    name_contains: Annotated[str | None, Query(max_length=200, description="in the name or the label")] = None,
    business_unit: Annotated[str | None, Query(max_length=200)] = None,
    priority: Priority | None = None,
    enabled: Annotated[bool | None, Query(description="the schedule is enabled")] = None,
    template: Annotated[str | None, Query(max_length=100)] = None,
    query: Annotated[str | None, Query(max_length=100)] = None,
    sort: Literal["name", "-name", "priority", "-priority", "business_unit", "-business_unit"] = "name",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DefinitionPage:
    needle = (name_contains or "").lower()
    found = [
        d
        for d in context.catalog.list_objects(ExportDefinition)
        if caller.sees(d.business_unit)
        and (not needle or needle in d.name or needle in (d.label or "").lower())
        and (business_unit is None or d.business_unit == business_unit)
        and (priority is None or d.priority is priority)
        and (enabled is None or d.schedule.enabled is enabled)
        and (template is None or d.template == template)
        and (query is None or d.query == query)
    ]
    ranks = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
    field = sort.lstrip("-")
    keys: dict[str, Any] = {
        "name": lambda d: d.name,
        "priority": lambda d: (ranks[d.priority], d.name),
        "business_unit": lambda d: (d.business_unit or "", d.name),
    }
    found.sort(key=keys[field], reverse=sort.startswith("-"))
    start = (page - 1) * page_size
    return DefinitionPage(items=found[start : start + page_size], total=len(found), page=page, page_size=page_size)


for _kind, _writer in (
    (ConnectionProfile, ProfileEditor),
    (HttpTemplate, Editor),
    (SavedQuery, Editor),
    (ExportDefinition, Editor),
):
    _register(_kind, _writer)


# --- the four steps of a definition ------------------------------------------------------------------


class FilterStep(BaseModel):
    """Step 1, *Filter*: the saved query, its parameter values, full or incremental."""

    model_config = ConfigDict(extra="forbid")
    query: Name
    parameters: dict[str, Any] = Field(default_factory=dict)
    incremental: Incremental | None = None


class DestinationStep(BaseModel):
    """Step 2, *Destination*: the HTTP API template (its columns must come from the query)."""

    model_config = ConfigDict(extra="forbid")
    template: Name


STEP_ERRORS = problem_responses(404, 422)


def _update_step(context: AdminContext, caller: Principal, name: str, changes: dict[str, Any]) -> ExportDefinition:
    definition = _get(context, ExportDefinition, name)
    _in_scope(caller, definition)
    updated = ExportDefinition.model_validate(stored_form(definition) | changes)
    _check_references(context, updated)
    context.catalog.apply(updated)
    return updated


@router.put(
    "/export-definitions/{name}/filter",
    tags=["ExportDefinition"],
    summary="Save step 1, Filter",
    responses=STEP_ERRORS,
    operation_id="filter_ExportDefinition",
)
def save_filter(context: Context, caller: Editor, name: str, step: FilterStep) -> ExportDefinition:
    return _update_step(context, caller, name, step.model_dump(mode="json"))


@router.put(
    "/export-definitions/{name}/destination",
    tags=["ExportDefinition"],
    summary="Save step 2, Destination",
    responses=STEP_ERRORS,
    operation_id="destination_ExportDefinition",
)
def save_destination(context: Context, caller: Editor, name: str, step: DestinationStep) -> ExportDefinition:
    return _update_step(context, caller, name, step.model_dump(mode="json"))


@router.put(
    "/export-definitions/{name}/schedule",
    tags=["ExportDefinition"],
    summary="Save step 3, Schedule",
    responses=STEP_ERRORS,
    operation_id="schedule_ExportDefinition",
)
def save_schedule(context: Context, caller: Editor, name: str, step: Schedule) -> ExportDefinition:
    return _update_step(context, caller, name, {"schedule": step.model_dump(mode="json")})


@router.put(
    "/export-definitions/{name}/notifications",
    tags=["ExportDefinition"],
    summary="Save step 4, Notifications",
    responses=STEP_ERRORS,
    operation_id="notifications_ExportDefinition",
)
def save_notifications(context: Context, caller: Editor, name: str, step: Notifications) -> ExportDefinition:
    return _update_step(context, caller, name, {"notifications": step.model_dump(mode="json")})


class SchedulePreview(BaseModel):
    """The next times a definition's schedule fires (whether or not it is enabled)."""

    enabled: bool
    timezone: str
    cron: str | None
    fire_times: list[datetime]


@router.get(
    "/export-definitions/{name}/schedule/preview",
    tags=["ExportDefinition"],
    summary="Preview the next fire times",
    responses=STEP_ERRORS,
    operation_id="preview_schedule_ExportDefinition",
)
def preview_schedule(
    context: Context, caller: Reader, name: str, count: Annotated[int, Query(ge=1, le=100)] = 5
) -> SchedulePreview:
    definition = _get(context, ExportDefinition, name)
    _in_scope(caller, definition)
    schedule = definition.schedule
    return SchedulePreview(
        enabled=schedule.enabled,
        timezone=schedule.timezone,
        cron=schedule.repeat.expression if schedule.repeat else None,
        fire_times=next_fire_times(schedule, datetime.now(UTC), count),
    )
