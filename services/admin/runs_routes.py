"""Routes of runs: execute on demand (idempotent), dry run, list, detail, cancel."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from services.admin.app import AdminContext, context_of, requires
from services.admin.bearer_tokens import Permission, Principal
from services.admin.objects_routes import _get, _in_scope
from services.admin.problems import ApiProblem, problem_responses
from shared.catalog import NotFound
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.rendering import TemplateRenderError, render_request
from shared.domain.runs import RunRecord, RunStatus
from shared.events import MemberBatch, RunCancelled, RunRequested, Trigger, utc_now
from shared.kafka import Outgoing
from shared.querystore import QueryError

router = APIRouter(tags=["Runs"])
Context = Annotated[AdminContext, Depends(context_of)]
Reader = Annotated[Principal, Depends(requires(Permission.READ))]
Operator = Annotated[Principal, Depends(requires(Permission.RUN))]
DryRunner = Annotated[Principal, Depends(requires(Permission.DRY_RUN))]
ERRORS = problem_responses(404, 409, 422)


class RunView(BaseModel):
    """A run as the API shows it: status, counts, timings, sample errors."""

    run_id: uuid.UUID
    definition: str
    status: RunStatus
    trigger: str | None
    requested_by: str | None
    scheduled_for: datetime | None
    replay_of: uuid.UUID | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    extraction_complete: bool
    extracted: int
    batches_expected: int | None
    batches_done: int
    delivered: int
    failed: int
    failure_reason: str | None
    error_samples: list[str]
    url: str

    @classmethod
    def of(cls, record: RunRecord, public_url: str = "") -> RunView:
        return cls(
            run_id=record.run_id,
            definition=record.definition,
            status=record.status,
            trigger=record.trigger,
            requested_by=record.requested_by,
            scheduled_for=record.scheduled_for,
            replay_of=record.replay_of,
            started_at=record.started_at,
            finished_at=record.finished_at,
            duration_seconds=record.duration_seconds,
            extraction_complete=record.extraction_complete,
            extracted=record.extracted,
            batches_expected=record.batches_expected,
            batches_done=record.batches_done,
            delivered=record.delivered,
            failed=record.failed,
            failure_reason=record.failure_reason,
            error_samples=list(record.error_samples),
            url=f"{public_url.rstrip('/')}/api/v1/runs/{record.run_id}",
        )


class RunRequest(BaseModel):
    """Optional values of the saved query's parameters for this run (they override the definition's)."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict)


@router.post(
    "/export-definitions/{name}/runs",
    status_code=202,
    summary="Execute a definition now (trigger manual); an Idempotency-Key makes a retried call return the same run",
    responses=ERRORS,
    operation_id="execute_ExportDefinition",
)
def execute(
    context: Context,
    caller: Operator,
    name: str,
    request: Annotated[RunRequest | None, Body()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> RunView:
    definition = _get(context, ExportDefinition, name)
    _in_scope(caller, definition)
    parameters = (request or RunRequest()).parameters
    query = _get(context, SavedQuery, definition.query)
    try:
        bind_values(query.parameters, parameters, definition.parameters)
    except ParameterError as exc:
        raise ApiProblem(422, f"parameters: {exc}", slug="invalid-parameters") from None
    run_id = uuid.uuid4()
    if idempotency_key:
        run_id = context.catalog.claim_idempotency_key(caller.name, definition.name, idempotency_key, run_id)
        known = context.catalog.get_run(run_id)
        if known is not None:
            return RunView.of(known, context.public_url)
    now = utc_now()
    record = RunRecord(
        run_id=run_id,
        definition=definition.name,
        trigger=Trigger.MANUAL.value,
        requested_by=caller.name,
        last_event_at=now,
    )
    # Recorded before it is published: the run is visible (queued) at once, and a crash between the two
    # leaves a queued run the notifier's sweep fails as stuck rather than a run nobody knows about.
    context.catalog.record_requested_run(record)
    requested = RunRequested(
        run_id=run_id,
        definition=definition.name,
        trigger=Trigger.MANUAL,
        requested_by=caller.name,
        parameters=parameters,
    )
    context.publish([Outgoing(context.topics.run_requests, str(run_id), requested.to_bytes())])
    return RunView.of(record, context.public_url)


class RenderedPreview(BaseModel):
    """One request the template would send (authentication and signature headers are added at dispatch)."""

    method: str
    url: str
    headers: dict[str, str]
    body: str
    members: int


class DryRun(BaseModel):
    """What a run would send first, rendered for the query's first members; nothing was sent."""

    definition: str
    template: str
    requests: list[RenderedPreview]


@router.post(
    "/export-definitions/{name}/dry-run",
    summary="Render the first requests the template would send for the query's first members, sending nothing",
    responses=ERRORS,
    operation_id="dry_run_ExportDefinition",
)
def dry_run(
    context: Context,
    caller: DryRunner,
    name: str,
    requests: Annotated[int, Query(ge=1, le=20)] = 3,
    request: Annotated[RunRequest | None, Body()] = None,
) -> DryRun:
    definition = _get(context, ExportDefinition, name)
    _in_scope(caller, definition)
    query = _get(context, SavedQuery, definition.query)
    template = _get(context, HttpTemplate, definition.template)
    profile = _get(context, ConnectionProfile, template.profile)
    try:
        values = bind_values(query.parameters, (request or RunRequest()).parameters, definition.parameters)
    except ParameterError as exc:
        raise ApiProblem(422, f"parameters: {exc}", slug="invalid-parameters") from None
    try:
        page = next(context.reader().pages(query, page_size=template.batch_size * requests, parameters=values), None)
    except QueryError as exc:
        raise ApiProblem(422, f"query '{query.name}': {exc}", slug="query-failed") from None
    members = page.members if page is not None else []
    previews = []
    for index in range(0, len(members), template.batch_size):
        chunk = members[index : index + template.batch_size]
        batch = MemberBatch(
            run_id=uuid.UUID(int=0),
            definition=definition.name,
            template=template.name,
            batch_index=index // template.batch_size,
            members=chunk,
        )
        try:
            rendered = render_request(template, profile, batch)
        except TemplateRenderError as exc:
            raise ApiProblem(422, f"template '{template.name}': {exc}", slug="template-failed") from None
        previews.append(
            RenderedPreview(
                method=rendered.method,
                url=rendered.url,
                headers=rendered.headers,
                body=rendered.content.decode("utf-8", errors="replace"),
                members=len(chunk),
            )
        )
    return DryRun(definition=definition.name, template=template.name, requests=previews)


def _scope_filter(context: AdminContext, caller: Principal) -> list[str] | None:
    """The definitions a scoped caller may see runs of (None: all)."""
    if not caller.business_units:
        return None
    return [d.name for d in context.catalog.list_objects(ExportDefinition) if caller.sees(d.business_unit)]


@dataclass
class RunFilter:
    """The filters of a run list (query parameters), most recent runs first."""

    status: Annotated[list[RunStatus] | None, Query()] = None
    since: datetime | None = None
    until: datetime | None = None
    limit: Annotated[int, Query(ge=1, le=500)] = 50
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0

    def runs(
        self, context: AdminContext, definition: str | None = None, definitions: list[str] | None = None
    ) -> list[RunView]:
        records = context.catalog.list_runs(
            definition,
            self.limit,
            definitions=definitions,
            statuses=self.status,
            since=self.since,
            until=self.until,
            offset=self.offset,
        )
        return [RunView.of(record, context.public_url) for record in records]


Filters = Annotated[RunFilter, Depends()]


@router.get("/runs", summary="List runs, most recent first", operation_id="list_runs")
def list_runs(
    context: Context,
    caller: Reader,
    filters: Filters,
    definition: Annotated[str | None, Query(max_length=100)] = None,
) -> list[RunView]:
    return filters.runs(context, definition, definitions=_scope_filter(context, caller))


@router.get(
    "/export-definitions/{name}/runs",
    summary="List a definition's runs",
    responses=ERRORS,
    operation_id="list_runs_of_ExportDefinition",
)
def list_definition_runs(context: Context, caller: Reader, name: str, filters: Filters) -> list[RunView]:
    definition = _get(context, ExportDefinition, name)
    _in_scope(caller, definition)
    return filters.runs(context, definition.name)


def _run(context: AdminContext, caller: Principal, run_id: uuid.UUID) -> RunRecord:
    record = context.catalog.get_run(run_id)
    if record is None:
        raise ApiProblem(404, f"run {run_id} does not exist", slug="not-found")
    with contextlib.suppress(NotFound):  # a deleted definition's runs stay readable
        _in_scope(caller, context.catalog.get(ExportDefinition, record.definition))
    return record


@router.get("/runs/{run_id}", summary="A run's detail", responses=ERRORS, operation_id="read_run")
def read_run(context: Context, caller: Reader, run_id: uuid.UUID) -> RunView:
    return RunView.of(_run(context, caller, run_id), context.public_url)


@router.post(
    "/runs/{run_id}/cancel",
    summary="Cancel a run: extraction stops, undelivered batches are not sent (409 once it has finished)",
    responses=ERRORS,
    operation_id="cancel_run",
)
def cancel_run(context: Context, caller: Operator, run_id: uuid.UUID) -> RunView:
    record = _run(context, caller, run_id)
    if record.status.is_final:
        raise ApiProblem(409, f"run {run_id} has finished ({record.status.value})", slug="run-finished")
    cancelled = RunCancelled(run_id=run_id, definition=record.definition, requested_by=caller.name)
    # Folded here so the cancellation holds at once (the extractor and dispatcher read the record), and
    # published for everyone else following the run events.
    _, after = context.catalog.fold_run_event(cancelled)
    context.publish([Outgoing(context.topics.run_events, str(run_id), cancelled.to_bytes())])
    return RunView.of(after, context.public_url)
