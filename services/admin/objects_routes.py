"""Routes of the catalog objects: CRUD and copy for all four kinds; search and the four steps of definitions.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations at
registration, and those of the generic routes name the kind of a closure.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from services.admin.dependencies import Context, Editor, ProfileEditor, Reader
from services.admin.preconditions import IfMatch, conditional_errors, expected_version, tag_answer, with_etag
from services.admin.problems import problem_responses
from shared.application import objects as use_cases
from shared.application.actors import Actor
from shared.application.manifests import parse_object_documents
from shared.application.schedules import who_paused
from shared.domain.catalog_objects import (
    LABEL_MAX_LENGTH,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    Incremental,
    Notifications,
    Priority,
    SavedQuery,
)
from shared.domain.names import Name
from shared.domain.revisions import Revision
from shared.domain.schedule import Schedule, next_fire_times
from shared.domain.strict_values import BoolText

T = TypeVar("T", bound=CatalogObject)
router = APIRouter()

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
    #: Its length is checked by the copy (as exportctl's copy on the catalog: ``field 'label': ...``), documented here.
    label: str | None = Field(default=None, json_schema_extra={"maxLength": LABEL_MAX_LENGTH})
    name: Name | None = None


# --- routes of profiles, templates and queries (one shape) -------------------------------------------


def _register(kind: type[T], writer: Any) -> None:
    collection = COLLECTIONS[kind]
    body_model = _input_model(kind)
    tag = kind.__name__
    errors = problem_responses(404, 409, 422)
    conditional = conditional_errors(404, 409, 422)

    if kind is not ExportDefinition:  # definitions are listed by their search

        @router.get(f"/{collection}", tags=[tag], summary=f"List {collection}", operation_id=f"list_{kind.__name__}")
        def list_all(context: Context, caller: Reader) -> list[kind]:  # type: ignore[valid-type]
            return context.definitions.list_objects(kind)

    @router.post(
        f"/{collection}",
        status_code=201,
        tags=[tag],
        summary=f"Create a {kind.__name__}",
        responses=errors | with_etag(201),
        operation_id=f"create_{kind.__name__}",
    )
    def create(context: Context, caller: writer, body: Annotated[body_model, Body()], response: Response) -> kind:  # type: ignore[valid-type]
        values = body.model_dump(mode="python", exclude_unset=True)  # type: ignore[attr-defined]
        revision, created = use_cases.create_object(
            caller, kind, values, store=context.definitions, checks=context.checks()
        )
        tag_answer(response, revision)
        return created

    @router.get(
        f"/{collection}/{{name}}",
        tags=[tag],
        summary=f"Read a {kind.__name__}",
        responses=errors | with_etag(200),
        operation_id=f"read_{kind.__name__}",
    )
    def read(context: Context, caller: Reader, name: str, response: Response) -> kind:  # type: ignore[valid-type]
        revision, obj = use_cases.visible_versioned(caller, context.definitions, kind, name)
        tag_answer(response, revision)
        return obj

    @router.put(
        f"/{collection}/{{name}}",
        tags=[tag],
        summary=f"Replace a {kind.__name__} (a different name in the body renames it)",
        responses=conditional | with_etag(200),
        operation_id=f"replace_{kind.__name__}",
    )
    def replace(
        context: Context,
        caller: writer,
        name: str,
        body: Annotated[body_model, Body()],  # type: ignore[valid-type]
        response: Response,
        if_match: IfMatch = None,
    ) -> kind:  # type: ignore[valid-type]
        values = body.model_dump(mode="python", exclude_unset=True)  # type: ignore[attr-defined]
        revision, stored = use_cases.replace_object(
            caller,
            kind,
            name,
            values,
            store=context.definitions,
            checks=context.checks(),
            expected_version=expected_version(if_match),
        )
        tag_answer(response, revision)
        return stored

    @router.delete(
        f"/{collection}/{{name}}",
        status_code=204,
        tags=[tag],
        summary=f"Delete a {kind.__name__}",
        responses=conditional_errors(404, 409, 422, body=False),
        operation_id=f"delete_{kind.__name__}",
    )
    def delete(context: Context, caller: writer, name: str, if_match: IfMatch = None) -> Response:
        use_cases.delete_object(
            caller, kind, name, store=context.definitions, expected_version=expected_version(if_match)
        )
        return Response(status_code=204)

    @router.post(
        f"/{collection}/{{name}}/copy",
        status_code=201,
        tags=[tag],
        summary=f'Copy a {kind.__name__} ("Copy of …"{"; schedule disabled" if kind is ExportDefinition else ""})',
        responses=errors | with_etag(201),
        operation_id=f"copy_{kind.__name__}",
    )
    def copy(
        context: Context,
        caller: writer,
        name: str,
        response: Response,
        body: Annotated[CopyRequest | None, Body()] = None,
    ) -> kind:  # type: ignore[valid-type]
        request = body or CopyRequest()
        revision, copied = use_cases.copy_object(
            caller,
            kind,
            name,
            store=context.definitions,
            checks=context.checks(),
            label=request.label,
            new_name=request.name,
        )
        tag_answer(response, revision)
        return copied


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
    enabled: Annotated[BoolText | None, Query(description="the schedule is enabled")] = None,
    template: Annotated[str | None, Query(max_length=100)] = None,
    query: Annotated[str | None, Query(max_length=100)] = None,
    sort: Literal["name", "-name", "priority", "-priority", "business_unit", "-business_unit"] = "name",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DefinitionPage:
    found, total = search_versioned(
        context,
        caller,
        name_contains=name_contains,
        business_unit=business_unit,
        priority=priority,
        enabled=enabled,
        template=template,
        query=query,
        sort=sort,
        page=page,
        page_size=page_size,
    )
    return DefinitionPage(items=[d for _, d in found], total=total, page=page, page_size=page_size)


def search_versioned(
    context: Context,
    caller: Actor,
    *,
    name_contains: str | None = None,
    business_unit: str | None = None,
    priority: Priority | None = None,
    enabled: bool | None = None,
    template: str | None = None,
    query: str | None = None,
    sort: str = "name",
    page: int = 1,
    page_size: int = 50,
) -> tuple[list[tuple[Revision, ExportDefinition]], int]:
    """:func:`search_definitions`' page, each definition with its revision (read with it, in one read: the
    console's list links carry it), and the number found."""
    needle = (name_contains or "").lower()
    found = [
        (revision, d)
        for revision, d in context.definitions.list_versioned(ExportDefinition)
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
    keys: dict[str, Callable[[ExportDefinition], Any]] = {
        "name": lambda d: d.name,
        "priority": lambda d: (ranks[d.priority], d.name),
        "business_unit": lambda d: (d.business_unit or "", d.name),
    }
    found.sort(key=lambda pair: keys[field](pair[1]), reverse=sort.startswith("-"))
    start = (page - 1) * page_size
    return found[start : start + page_size], len(found)


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


STEP_ERRORS = conditional_errors(404, 422) | with_etag(200)


def _saved_step(
    context: Context,
    caller: Any,
    name: str,
    step: BaseModel,
    response: Response,
    if_match: str | None,
    field_name: str | None = None,
) -> ExportDefinition:
    """Save one step (conditional on ``If-Match`` if given); the answer carries the definition's ``ETag``."""
    revision, saved = use_cases.save_definition_step(
        caller,
        name,
        step,
        store=context.definitions,
        checks=context.checks(),
        field_name=field_name,
        expected_version=expected_version(if_match),
    )
    tag_answer(response, revision)
    return saved


@router.put(
    "/export-definitions/{name}/filter",
    tags=["ExportDefinition"],
    summary="Save step 1, Filter",
    responses=STEP_ERRORS,
    operation_id="filter_ExportDefinition",
)
def save_filter(
    context: Context, caller: Editor, name: str, step: FilterStep, response: Response, if_match: IfMatch = None
) -> ExportDefinition:
    return _saved_step(context, caller, name, step, response, if_match)


@router.put(
    "/export-definitions/{name}/destination",
    tags=["ExportDefinition"],
    summary="Save step 2, Destination",
    responses=STEP_ERRORS,
    operation_id="destination_ExportDefinition",
)
def save_destination(
    context: Context, caller: Editor, name: str, step: DestinationStep, response: Response, if_match: IfMatch = None
) -> ExportDefinition:
    return _saved_step(context, caller, name, step, response, if_match)


@router.put(
    "/export-definitions/{name}/schedule",
    tags=["ExportDefinition"],
    summary="Save step 3, Schedule",
    responses=STEP_ERRORS,
    operation_id="schedule_ExportDefinition",
)
def save_schedule(
    context: Context, caller: Editor, name: str, step: Schedule, response: Response, if_match: IfMatch = None
) -> ExportDefinition:
    return _saved_step(context, caller, name, step, response, if_match, field_name="schedule")


@router.put(
    "/export-definitions/{name}/notifications",
    tags=["ExportDefinition"],
    summary="Save step 4, Notifications",
    responses=STEP_ERRORS,
    operation_id="notifications_ExportDefinition",
)
def save_notifications(
    context: Context, caller: Editor, name: str, step: Notifications, response: Response, if_match: IfMatch = None
) -> ExportDefinition:
    return _saved_step(context, caller, name, step, response, if_match, field_name="notifications")


class SchedulePreview(BaseModel):
    """The next times a definition's schedule fires (whether or not it is enabled)."""

    enabled: bool
    #: Who disabled the schedule: the operator who saved it disabled, or the notifier's pause after a run's failures
    #: (``notifier: run <id>``); null while enabled, or not known (disabled before this was recorded).
    paused_by: str | None = None
    timezone: str
    cron: str | None
    fire_times: list[datetime]
    #: The scheduler could not compute this schedule's fire times (the error's type): it does not fire until the
    #: definition is edited (``fire_times`` is then empty); null when it could (or has not seen this version yet).
    not_computable: str | None = None


@router.get(
    "/export-definitions/{name}/schedule/preview",
    tags=["ExportDefinition"],
    summary="Preview the next fire times",
    responses=problem_responses(404, 422),
    operation_id="preview_schedule_ExportDefinition",
)
def preview_schedule(
    context: Context, caller: Reader, name: str, count: Annotated[int, Query(ge=1, le=100)] = 5
) -> SchedulePreview:
    schedule = use_cases.visible(caller, context.definitions, ExportDefinition, name).schedule
    # Not computed again here when the scheduler could not: the same maths would fail (a 500), or list times that
    # never fire.
    not_computable = context.definitions.schedules_not_computable([name]).get(name)
    return SchedulePreview(
        enabled=schedule.enabled,
        paused_by=None if schedule.enabled else who_paused(name, store=context.definitions),
        timezone=schedule.timezone,
        cron=schedule.repeat.expression if schedule.repeat else None,
        fire_times=[] if not_computable else next_fire_times(schedule, datetime.now(UTC), count),
        not_computable=not_computable,
    )


# --- applying a set of objects at once (exportctl apply) -----------------------------------------------


class ObjectDocument(BaseModel):
    """One object of a set: its kind and its spec (the object's fields, ``name`` included)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ConnectionProfile", "HttpTemplate", "SavedQuery", "ExportDefinition"]
    spec: dict[str, Any]


class ApplyRequest(BaseModel):
    """Objects to create or update together: all of them, or none."""

    model_config = ConfigDict(extra="forbid")
    objects: list[ObjectDocument] = Field(max_length=1_000)


class AppliedChange(BaseModel):
    """What applying one object did (or, in a dry run, would do)."""

    kind: str
    name: str
    change: Literal["created", "updated", "unchanged"]
    fields: list[str]


class ApplyResponse(BaseModel):
    """One change per object, in the order applied (dependencies first)."""

    dry_run: bool
    changes: list[AppliedChange]


@router.post(
    "/apply",
    tags=["Catalog"],
    summary="Create or update a set of objects, all or nothing (exportctl apply); dry_run only says what changes",
    responses=problem_responses(403, 422),
    operation_id="apply_objects",
)
def apply_objects(
    context: Context,
    caller: Editor,
    request: ApplyRequest,
    dry_run: Annotated[BoolText, Query(description="say what would change, change nothing")] = False,
) -> ApplyResponse:
    objects = parse_object_documents([document.model_dump() for document in request.objects], "body")
    changes = use_cases.apply_objects(
        caller, objects, store=context.definitions, checks=context.checks(), dry_run=dry_run
    )
    return ApplyResponse(
        dry_run=dry_run,
        changes=[AppliedChange(kind=c.kind, name=c.name, change=c.change, fields=c.fields) for c in changes],
    )
