"""The wire contract: every record on every topic is one of these pydantic models, as JSON (UTF-8).

Versioning: each event carries ``schema_version``. Additive changes (a new optional field) keep the
version; consumers ignore fields they do not know. A breaking change bumps the version, and consumers
dead-letter versions they do not support rather than guessing. ``python -m shared.events`` prints the
JSON Schema of every event.

Topics and keys (names in :mod:`shared.topics`):

========================  ===========================  =====================================
topic                     record                       key
========================  ===========================  =====================================
run-requests              :class:`RunRequested`        run id
run-requests              :class:`RangeRequested`      ``<run id>:<range>:<n>`` (placed)
member-batches            :class:`MemberBatch`         ``<run id>:<batch index>`` (spreads)
run-events                :data:`RunEvent` (union)     run id (a run's events stay in order)
dead-letters              :class:`DeadLetter`          run id, or the source record's key
========================  ===========================  =====================================
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
)

SCHEMA_VERSION = 1

#: The internal name of a catalog object: lowercase letters, digits and dashes, 1 to 100 characters (the catalog's
#: ``name`` columns are VARCHAR(100)). Here, not in ``shared.domain.names`` (which takes it from here), because the
#: wire contract imports nothing else of the project.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$"
#: A definition's name in a run request: the catalog's rule, so a request for a name no definition can have is
#: refused when it is decoded (dead-lettered naming the field), not by a database column further on.
DefinitionName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
#: The longest ``requested_by`` a run keeps: the runs' ``requested_by`` column is VARCHAR(200).
REQUESTED_BY_MAX = 200
#: Who requested a run, in a run request: at most :data:`REQUESTED_BY_MAX` characters (refused when longer).
#: No NUL: a PostgreSQL catalog cannot record it (the run would start and its record fail).
RequestedBy = Annotated[str, StringConstraints(max_length=REQUESTED_BY_MAX, pattern=r"^[^\x00]*$")]
#: A run request's ``allow_mass_removal``: a JSON ``true`` or ``false`` only (a safety override is not read from
#: ``"yes"``, ``1`` or ``"on"``; anything else refuses the request, dead-lettered naming the field).
MassRemovalOverride = Annotated[bool, Strict()]


def cut_requested_by(value: object) -> object:
    """``value`` without NUL characters (no catalog text holds them), cut to :data:`REQUESTED_BY_MAX` characters,
    when it is a string (anything else as it is)."""
    return value.replace("\x00", "")[:REQUESTED_BY_MAX] if isinstance(value, str) else value


#: The longest reason an event carries, in characters: a run's failure, a batch's error, a refused member's, a
#: dead letter's (a longer one is cut when the event is made or read, saying how much was cut).
REASON_MAX_CHARS = 4000
#: The largest count or index an event carries: the catalog's INTEGER columns (32-bit on PostgreSQL) hold no more.
COUNT_MAX = 2**31 - 1
#: A count or an index in an event: 0 to :data:`COUNT_MAX` (a record with one out of range is refused when it is
#: decoded, dead-lettered naming the field, on SQLite as on PostgreSQL).
Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]


def cut_text(text: str, limit: int) -> str:
    """``text``, or its beginning saying how many characters more there were: ``limit`` characters in all
    (so cutting again changes nothing)."""
    if len(text) <= limit:
        return text
    kept = limit - 40  # room for the note
    return f"{text[:kept]}… ({len(text) - kept} more characters)"


def bounded_text(value: object) -> object:
    """``value`` cut to :data:`REASON_MAX_CHARS` characters and made valid UTF-8 (a lone surrogate, which JSON cannot
    carry, becomes ``?``) when it is a string (anything else as it is)."""
    if not isinstance(value, str):
        return value
    return cut_text(value, REASON_MAX_CHARS).encode("utf-8", errors="replace").decode("utf-8")


def bounded_reason(reason: str) -> str:
    """A reason fit for an event: :func:`bounded_text`, never empty."""
    return str(bounded_text(reason)) or "(no reason given)"


#: A reason in an event: cut by :func:`bounded_text` (never refused: the reason is the news).
Reason = Annotated[str, BeforeValidator(bounded_text)]


#: Who requested a run, in the events of a run already started: cut to :data:`REQUESTED_BY_MAX`, never refused (an
#: event of an older release, whose requests were not bounded, still folds into the run's record).
StartedBy = Annotated[str | None, BeforeValidator(cut_requested_by)]


def utc_now() -> datetime:
    """The current instant, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of all events: versioned, immutable, tolerant of fields added by newer producers."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    EVENT = "event"
    REPLAY = "replay"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class RunRequested(Event):
    """Start an export run. Published by the scheduler, ``exportctl run`` and other systems.

    ``run_id`` makes the request idempotent: a run id is extracted at most once (the first request handled with it
    wins; another's body is not compared). Without one, the run id is derived from the request's record (its topic,
    partition, offset and timestamp): the record read again (redelivered, handed back) is the same run, the request
    published twice two runs; a publisher that wants to correlate sends its own. ``definition`` is the
    export definition's internal name. ``parameters`` gives values to the saved query's declared
    parameters (over the definition's values and the defaults). ``allow_mass_removal`` lets a change-mode
    run remove more of the partner's members than its definition's ``sync.max_removed`` allows (an operator's
    deliberate choice: ``exportctl run --allow-mass-removal``). Also accepted as a CloudEvent of type
    :data:`RUN_REQUESTED_CLOUDEVENT_TYPE` (see ``services.extractor.run_request_decoding``).

    ``scheduled_for`` is a scheduled run's due instant. A run request with a ``scheduled_for`` later than the
    extractor's clock does not start before it (the scheduler publishes runs due within its lookahead ahead of
    their instant, with ``requested_at`` before ``scheduled_for``); one due further ahead than the extractor
    waits (``EXPORT_EXTRACTOR_MAX_START_WAIT_SECONDS``) starts when received. A scheduled run published ahead
    is judged when it starts: not started if its definition was deleted, disabled or rescheduled meanwhile,
    skipped if its overlap policy is skip and another of its runs is active. ``definition_id`` (set by the
    scheduler) is the catalog id of that definition: the one it is judged against, under whatever name it has by
    then (a rename keeps the id; a definition deleted and created again under the same name is another one).
    """

    type: Literal["run.requested"] = "run.requested"
    run_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    definition: DefinitionName
    trigger: Trigger = Trigger.EVENT
    requested_at: AwareDatetime = Field(default_factory=utc_now)
    requested_by: RequestedBy | None = None
    scheduled_for: AwareDatetime | None = None
    definition_id: uuid.UUID | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: Let a change-mode run remove more members than its definition's ``sync.max_removed`` allows, this once.
    allow_mass_removal: MassRemovalOverride = False


class RangeRequested(Event):
    """Extract one key range of a run split across extractor replicas. Published by the extractor that
    took the run's :class:`RunRequested`, one for each of the run's ``ranges`` ranges, on the same topic;
    any extractor replica takes it. The range's bounds and batch indexes are in the extraction store.

    ``parameters`` are the run request's. Only extractors of this release or later read this record: roll
    every extractor out before runs are split (``EXPORT_EXTRACTOR_RANGE_MEMBERS``).
    """

    type: Literal["run.range_requested"] = "run.range_requested"
    run_id: uuid.UUID
    definition: str
    range_index: Count
    ranges: Annotated[int, Field(ge=2, le=COUNT_MAX)]
    parameters: dict[str, Any] = Field(default_factory=dict)
    at: AwareDatetime = Field(default_factory=utc_now)


#: Any record of the run-requests topic (an extractor's own range requests besides run requests).
AnyRunRequest = RunRequested | RangeRequested


#: The CloudEvents ``type`` of a run request published as a CloudEvent (structured or binary mode).
RUN_REQUESTED_CLOUDEVENT_TYPE = "io.member-export.run.requested.v1"


class ChangeKind(StrEnum):
    """How a member differs from its definition's last delivered snapshot (``sync: {mode: changes}``)."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


class MemberBatch(Event):
    """A chunk of a run's members, as many as the template's batch size.

    ``(run_id, batch_index)`` is the batch's identity: the same batch extracted twice (after a crash)
    has the same identity and the same members, so the dispatcher's Idempotency-Key and the notifier's
    accounting deduplicate it.

    ``key_column`` names the member field that identifies a member (the saved query's key), so outcomes
    can name the members they refused. ``change`` is set by change-mode runs (every member of the record
    is of that kind); ``retry`` marks members re-sent because an earlier run's delivery of them failed.
    """

    type: Literal["member.batch"] = "member.batch"
    run_id: uuid.UUID
    definition: str
    template: str
    priority: Priority = Priority.NORMAL
    batch_index: Count
    members: list[dict[str, Any]]
    key_column: str | None = None
    change: ChangeKind | None = None
    retry: bool = False

    @property
    def identity(self) -> str:
        return f"{self.run_id}:{self.batch_index}"


class RunStarted(Event):
    """The extractor accepted a run request and starts reading members."""

    type: Literal["run.started"] = "run.started"
    run_id: uuid.UUID
    definition: str
    trigger: Trigger
    requested_by: StartedBy = None
    #: The request's own time (its ``requested_at``: a CloudEvent's ``time``), kept in the run's record.
    requested_at: AwareDatetime | None = None
    scheduled_for: AwareDatetime | None = None
    #: A replay run (``exportctl dead-letters replay``) names the run whose dead letters it re-sends.
    replay_of: uuid.UUID | None = None
    #: The run request's ``allow_mass_removal``, kept in the run's record.
    allow_mass_removal: bool = False
    at: AwareDatetime = Field(default_factory=utc_now)


class ChangeCounts(BaseModel):
    """A change-mode run's members by kind (``unchanged`` ones were compared and not sent)."""

    model_config = ConfigDict(extra="ignore")

    added: Count = 0
    changed: Count = 0
    unchanged: Count = 0
    removed: Count = 0


class ExtractionCompleted(Event):
    """Every member of the run has been published, in ``batches`` batches.

    ``changes`` counts a change-mode run's members by kind; ``retries`` is how many of ``members`` were
    re-sent because an earlier run's delivery of them failed.
    """

    type: Literal["run.extraction_completed"] = "run.extraction_completed"
    run_id: uuid.UUID
    definition: str
    members: Count
    batches: Count
    changes: ChangeCounts | None = None
    retries: Count = 0
    at: AwareDatetime = Field(default_factory=utc_now)


class RefusedMember(BaseModel):
    """One member a batch failed to deliver: its key, the partner's last status and the reason."""

    model_config = ConfigDict(extra="ignore")

    key: str
    status: Count | None = None
    reason: Reason
    attempts: Count = 0


class BatchOutcome(Event):
    """What happened to one batch: members delivered and members failed (dead-lettered).

    When the batch named its ``key_column``: ``member_keys`` lists every member's key in the batch's
    order and ``refused`` the ones that failed (a subset, with status and reason), so per-member state
    (the delivery log, the change snapshot, retries on the next run) follows exactly what was
    delivered. ``change`` and ``retry`` echo the batch's own.
    """

    type: Literal["run.batch_outcome"] = "run.batch_outcome"
    run_id: uuid.UUID
    definition: str
    batch_index: Count
    delivered: Count
    failed: Count
    status_code: Count | None = None
    error: Reason | None = None
    attempts: Count = 1
    member_keys: list[str] | None = None
    refused: list[RefusedMember] = Field(default_factory=list)
    change: ChangeKind | None = None
    retry: bool = False
    at: AwareDatetime = Field(default_factory=utc_now)


class RunFailed(Event):
    """The run cannot go on (unknown definition, query error...): ``reason`` says why."""

    type: Literal["run.failed"] = "run.failed"
    run_id: uuid.UUID
    definition: str
    reason: Reason
    at: AwareDatetime = Field(default_factory=utc_now)


class ScheduledRunNotStarted(Event):
    """A scheduled run recorded without starting it, with the reason: by the scheduler, or by the extractor for a
    run published ahead of its instant."""

    run_id: uuid.UUID
    definition: str
    scheduled_for: AwareDatetime
    reason: Reason
    at: AwareDatetime = Field(default_factory=utc_now)


class RunSkipped(ScheduledRunNotStarted):
    """A scheduled run that did not start because the definition's previous run was still active."""

    type: Literal["run.skipped"] = "run.skipped"


class RunMissed(ScheduledRunNotStarted):
    """A scheduled run that was due while no scheduler could fire it, past the catch-up window."""

    type: Literal["run.missed"] = "run.missed"


class RunCancelled(Event):
    """Someone cancelled the run (the admin API): extraction stops, undelivered batches are not sent. May repeat.

    One run's cancellation can be published more than once: cancelling a cancelled run publishes it again (the retry
    of a cancel Kafka did not acknowledge) until the notifier has handled the run's finish; after that, nothing. A
    second one changes nothing: the run stays cancelled, counted once (the extractor and the dispatcher read the
    cancellation from the catalog, not from this event)."""

    type: Literal["run.cancelled"] = "run.cancelled"
    run_id: uuid.UUID
    definition: str
    requested_by: StartedBy = None
    at: AwareDatetime = Field(default_factory=utc_now)


class CircuitBreakerChanged(Event):
    """A connection profile's circuit breaker opened for the dispatcher fleet (its deliveries pause: batches
    wait) or closed again (they resume). Published at least once per change across the dispatcher replicas
    (again until a publication succeeds: consumers deduplicate by profile, state and episode), keyed by the
    profile's name on the run-events topic; ``episode`` counts the profile's openings (an opening and its
    closing share it)."""

    type: Literal["circuit.changed"] = "circuit.changed"
    profile: str
    state: Literal["open", "closed"]
    episode: Count
    at: AwareDatetime = Field(default_factory=utc_now)


#: Any event of a run (what the run's record is folded from).
AnyRunEvent = RunStarted | ExtractionCompleted | BatchOutcome | RunFailed | RunSkipped | RunMissed | RunCancelled
RunEvent = Annotated[AnyRunEvent, Field(discriminator="type")]
RUN_EVENT_ADAPTER: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)
#: Any record of the run-events topic: a run's event, or a circuit breaker's change.
AnyRunEventsRecord = AnyRunEvent | CircuitBreakerChanged
RUN_EVENTS_RECORD_ADAPTER: TypeAdapter[AnyRunEventsRecord] = TypeAdapter(
    Annotated[AnyRunEventsRecord, Field(discriminator="type")]
)


class DeadLetterHeader(BaseModel):
    """One header of a dead letter's source record: its name and value as text (invalid UTF-8 replaced), each cut;
    the value of a header named like a credential masked (``***``); ``value`` None for a header without one."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    value: str | None = None


class DeadLetter(Event):
    """Something that could not be processed or delivered, with the reason, kept for inspection and replay.

    Either a raw record that could not be decoded or handled (``payload`` holds it as text, at most
    64 KiB of it, with the whole value's ``payload_size`` and ``payload_sha256``; ``headers`` its headers, in
    order, at most 4 KiB of them) or members that the destination rejected (``members``, ``last_status``,
    ``attempts``).
    """

    type: Literal["dead_letter"] = "dead_letter"
    reason: Reason
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    service: str
    run_id: uuid.UUID | None = None
    definition: str | None = None
    batch_index: int | None = None
    members: list[dict[str, Any]] | None = None
    last_status: int | None = None
    attempts: int | None = None
    payload: str | None = Field(
        default=None,
        description="The source record's value as UTF-8 text (invalid bytes replaced), at most 64 KiB of its "
        "JSON encoding: a larger value is cut (payload_truncated).",
    )
    payload_size: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The size in bytes of the source record's whole value."
    )
    payload_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="The SHA-256 (hex) of the source record's whole value."
    )
    payload_truncated: bool = Field(
        default=False, description="True when payload holds only the beginning of the value, or none of it."
    )
    headers: list[DeadLetterHeader] | None = Field(
        default=None,
        description="The source record's headers, in order (a binary-mode CloudEvent's ce_* attributes, its "
        "traceparent): each name cut to 256 bytes and value to 1 KiB, at most 4 KiB of them in all "
        "(headers_truncated); the value of a header named like a credential (Authorization, *token*, *secret*, "
        "*key*, ...) is ***, credentials in the others masked by their shape. None: the record had none.",
    )
    headers_truncated: bool = Field(
        default=False, description="True when a header's name or value was cut, or headers were left out."
    )
    at: AwareDatetime = Field(default_factory=utc_now)


def json_schemas() -> dict[str, Any]:
    """The JSON Schema of every event, by event type."""
    models: list[type[Event]] = [
        RunRequested,
        RangeRequested,
        MemberBatch,
        RunStarted,
        ExtractionCompleted,
        BatchOutcome,
        RunFailed,
        RunSkipped,
        RunMissed,
        RunCancelled,
        CircuitBreakerChanged,
        DeadLetter,
    ]
    return {model.model_fields["type"].default: model.model_json_schema() for model in models}


if __name__ == "__main__":
    json.dump(json_schemas(), sys.stdout, indent=2)
    print()
