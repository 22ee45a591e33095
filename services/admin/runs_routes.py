"""Routes of runs: execute on demand (idempotent), dry run, list, detail, cancel, replay dead letters (idempotent)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from services.admin.dependencies import AdminContext, Context, DryRunner, Operator, Reader
from services.admin.problems import ApiProblem, problem_responses
from shared.application import objects as object_use_cases
from shared.application import runs as use_cases
from shared.application.dry_run import dry_run as render_dry_run
from shared.application.replay import replay_dead_letters
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunNotification, RunRecord, RunStatus
from shared.domain.strict_values import IsoDateTime, StrictBool

router = APIRouter(tags=["Runs"])
ERRORS = problem_responses(404, 409, 422)
#: An Idempotency-Key holds a character other than whitespace: an empty or blank one is a 422 naming the header, not
#: "no key" (each retry would start another run, another replay).
NOT_BLANK = r"\S"


class NotificationView(BaseModel):
    """One of the run's notifications (an email of a kind, or a webhook channel's event) and where it stands."""

    #: ``success``, ``error``, ``recovered`` (emails) or ``webhook:<channel>:<event>``.
    kind: str
    #: The webhook's channel (null for an email).
    channel: str | None
    #: The email's addresses, or the webhook's channel.
    recipients: list[str]
    #: ``sent``, ``pending`` (to be tried, again at ``next_attempt_at`` once one failed) or ``given_up`` (not tried
    #: again: ``last_error`` says why).
    status: Literal["sent", "pending", "given_up"]
    #: Failed attempts so far that count toward giving it up: an email's failures every email would meet (the SMTP
    #: server down or refusing the sender: ``last_error`` keeps the last) are not among them.
    attempts: int
    #: The last failed attempt's reason; for a sent email, the recipients it did not reach (refused while the others
    #: took it).
    last_error: str | None
    sent_at: datetime | None
    gave_up_at: datetime | None
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, notification: RunNotification) -> NotificationView:
        return cls.model_validate(notification, from_attributes=True)  # the same names, the channel a property


class RunView(BaseModel):
    """A run as the API shows it: status, counts, timings, sample errors."""

    run_id: uuid.UUID
    definition: str
    status: RunStatus
    trigger: str | None
    requested_by: str | None
    requested_at: datetime | None
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
    #: Change-mode runs: members by kind (null otherwise).
    added: int | None = None
    changed: int | None = None
    unchanged: int | None = None
    removed: int | None = None
    #: Members re-sent because an earlier run's delivery of them failed.
    retried: int = 0
    #: The run's request allowed it to remove more members than the definition's sync.max_removed.
    mass_removal_allowed: bool = False
    url: str
    #: The run's notifications (emails and webhooks) and where each stands: in a run's detail (``GET /runs/{run_id}``),
    #: null in lists.
    notifications: list[NotificationView] | None = None

    @classmethod
    def of(
        cls, record: RunRecord, public_url: str = "", notifications: Sequence[RunNotification] | None = None
    ) -> RunView:
        return cls(
            run_id=record.run_id,
            definition=record.definition,
            status=record.status,
            trigger=record.trigger,
            requested_by=record.requested_by,
            requested_at=record.requested_at,
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
            added=record.added,
            changed=record.changed,
            unchanged=record.unchanged,
            removed=record.removed,
            retried=record.retried,
            mass_removal_allowed=record.mass_removal_allowed,
            url=f"{public_url.rstrip('/')}/api/v1/runs/{record.run_id}",
            notifications=None if notifications is None else [NotificationView.of(n) for n in notifications],
        )


class ReplayView(RunView):
    """A replay run as its request answers it: the run (queued), and the dead-lettered members it sends in how many
    batches (what exportctl prints)."""

    members: int
    batches: int


class DryRunRequest(BaseModel):
    """Optional values of the saved query's parameters (they override the definition's)."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict)


class RunRequest(DryRunRequest):
    """Optional values of the saved query's parameters for this run (they override the definition's), and whether
    a change-mode run may remove more members than the definition's ``sync.max_removed`` allows (this run only)."""

    allow_mass_removal: StrictBool = Field(
        default=False,
        description="Let this change-mode run remove more of the partner's members than the definition's "
        "sync.max_removed allows (a run over it otherwise fails before sending anything).",
    )


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
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200, pattern=NOT_BLANK)] = None,
) -> RunView:
    body = request or RunRequest()
    record = use_cases.request_run(
        caller,
        name,
        store=context.definitions,
        runs=context.runs,
        publisher=context.publisher,
        parameters=body.parameters,
        idempotency_key=idempotency_key,
        allow_mass_removal=body.allow_mass_removal,
    )
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
    request: Annotated[DryRunRequest | None, Body()] = None,
) -> DryRun:
    result = render_dry_run(
        caller,
        name,
        store=context.definitions,
        members=context.members(),
        requests=requests,
        parameters=(request or DryRunRequest()).parameters,
    )
    previews = [
        RenderedPreview(
            method=rendered.method,
            url=rendered.url,
            headers=rendered.headers,
            body=rendered.content.decode("utf-8", errors="replace"),
            members=members,
        )
        for rendered, members in result.requests
    ]
    return DryRun(definition=result.definition, template=result.template, requests=previews)


@dataclass
class RunFilter:
    """The filters of a run list (query parameters), most recent runs first."""

    status: Annotated[list[RunStatus] | None, Query()] = None
    since: IsoDateTime | None = None
    until: IsoDateTime | None = None
    limit: Annotated[int, Query(ge=1, le=500)] = 50
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0

    def runs(
        self,
        context: AdminContext,
        definition: str | None = None,
        *,
        definition_id: uuid.UUID | None = None,
        business_units: frozenset[str] | None = None,
    ) -> list[RunView]:
        records = context.runs.list_runs(
            definition,
            self.limit,
            definition_id=definition_id,
            business_units=business_units,
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
    return filters.runs(context, definition, business_units=use_cases.units_in_scope(caller))


@router.get(
    "/export-definitions/{name}/runs",
    summary="List a definition's runs",
    responses=ERRORS,
    operation_id="list_runs_of_ExportDefinition",
)
def list_definition_runs(context: Context, caller: Reader, name: str, filters: Filters) -> list[RunView]:
    definition_id, _ = object_use_cases.visible_with_id(caller, context.definitions, ExportDefinition, name)
    # By id: a renamed definition keeps its history, a re-created name starts a new one.
    return filters.runs(context, definition_id=definition_id, business_units=use_cases.units_in_scope(caller))


@router.get("/runs/{run_id}", summary="A run's detail", responses=ERRORS, operation_id="read_run")
def read_run(context: Context, caller: Reader, run_id: uuid.UUID) -> RunView:
    record = use_cases.visible_run(caller, run_id, runs=context.runs)
    return RunView.of(record, context.public_url, context.runs.notifications_of(run_id))


@router.post(
    "/runs/{run_id}/cancel",
    summary="Cancel a run: extraction stops, undelivered batches are not sent (409 once it has finished; a run "
    "already cancelled: its cancellation published again while the notifier has not handled its finish, the retry "
    "of a 503 kafka-unavailable)",
    responses=ERRORS,
    operation_id="cancel_run",
)
def cancel_run(context: Context, caller: Operator, run_id: uuid.UUID) -> RunView:
    record = use_cases.cancel_run(
        caller, run_id, store=context.definitions, runs=context.runs, publisher=context.publisher
    )
    return RunView.of(record, context.public_url)


#: A retried replay's Idempotency-Key, as the console's form and exportctl's ``--idempotency-key`` carry it.
_REPLAY_KEY = (
    "A key of the caller's: a retried call with the same key and run is the same replay run (what Kafka did not "
    "acknowledge of it published again, nothing once its extraction is complete); the key used before for another "
    "request (a replay of another run, a run request) is a 422 idempotency-key-reused; an empty or blank key is a 422 "
    "invalid-request."
)


@router.post(
    "/runs/{run_id}/replay",
    status_code=202,
    summary="Replay a run's dead-lettered members as a replay run (trigger replay) through the definition's current "
    "HTTP template and profile; an Idempotency-Key makes a retried call return the same replay run",
    description="Answered 202 with the replay run (recorded queued) and its address in `Location`, as a run's "
    "request is, with the members it sends in how many batches (`members`, `batches`). Refusals, as the console and "
    "exportctl say them: 404 (the run does not exist or is out of scope), 422 `nothing-to-replay` (no dead letters "
    "of the run), `member-too-large`, `idempotency-key-reused`; 409 `dead-letters-changed` (the key's replay run "
    "was recorded from other dead letters: a new key replays them as they are) or `replay-ended` (the key's replay "
    "run ended before its extraction was complete: a new key); 503 "
    "`replay-being-published` (another request with the key publishes it now: retry with the same key), "
    "`kafka-unavailable` (the replay run recorded queued, its events not all acknowledged: retry with the same key), "
    "`dead-letters-unreadable` (Kafka did not give the dead letters: no replay run recorded, the Idempotency-Key "
    "bound to this run's replay all the same: retry with it), `dead-letters-busy` (as many dead-letter reads as the "
    "server allows at once run now, a replay holding one from its key's checks through its read, its record and its "
    "publication included (a retry with nothing left to publish needs none): no replay run recorded, the "
    "Idempotency-Key bound to this run's replay all the same, or, when an earlier request under the key recorded "
    "it, that replay run named: retry with the same key after `Retry-After`), `dead-letters-unavailable` "
    "(an admin app embedded without dead letters; the server always reads them).",
    responses={
        202: {"headers": {"Location": {"description": "The replay run's address", "schema": {"type": "string"}}}},
        **problem_responses(404, 409, 422),
    },
    operation_id="replay_run",
)
def replay_run(
    context: Context,
    caller: Operator,
    run_id: uuid.UUID,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=200, pattern=NOT_BLANK, description=_REPLAY_KEY)
    ] = None,
) -> ReplayView:
    replays = context.replays
    if replays is None:  # an app embedded without them (the server's composition root always wires them)
        raise ApiProblem(503, "the dead letters are not available on this server", slug="dead-letters-unavailable")
    # DeadLettersUnreadable (503 dead-letters-unreadable) and Busy (503 dead-letters-busy) as problems.install says.
    # One of the reads held past the key's checks, not the Kafka read only: the replay run's record and its
    # publication (a slow or frozen broker) hold the request thread too.
    started = replay_dead_letters(
        caller,
        run_id,
        store=context.definitions,
        runs=context.runs,
        letters=replays.letters(),
        publisher=context.publisher,
        max_record_bytes=replays.max_record_bytes,
        idempotency_key=idempotency_key,
        slot=replays.slot,
    )
    view = RunView.of(use_cases.visible_run(caller, started.run_id, runs=context.runs), context.public_url)
    response.headers["Location"] = view.url
    return ReplayView(**view.model_dump(), members=started.members, batches=started.batches)
