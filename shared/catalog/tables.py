"""The catalog's tables (SQLAlchemy 2.x declarative)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.events import REQUESTED_BY_MAX


class Base(DeclarativeBase):
    pass


class CatalogObjectRow(Base):
    """A profile, template, query or definition: its validated spec as JSON, under a stable id."""

    __tablename__ = "catalog_objects"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: A definition's schedule disabled: who disabled it, written in the transaction that did (migration 0016): the
    #: operator (the actor of the change's audit entry) or the notifier's pause after a run's failures
    #: (:func:`shared.application.schedules.paused_by_run`). Null while it is enabled, for the other kinds, and for a
    #: schedule disabled before 0016 (not known).
    schedule_paused_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

    # Every UPDATE and DELETE of a row loaded through the ORM carries ``WHERE version = <the version read>``
    # (the store sets the next version itself): a write that lost a race to another raises ``StaleDataError``
    # instead of overwriting it, on SQLite (which has no ``FOR UPDATE``) as on PostgreSQL.
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}


class CatalogReferenceRow(Base):
    """An object another one names (migration 0025): a template its query and profile, a definition its query, its
    templates and the definition it follows (:func:`~shared.domain.catalog_objects.references`). Written with the
    referrer's row, in its transaction; read by ``(kind, name)`` to find who names an object (may it be deleted or
    renamed?) with one indexed query, never a read of every template and definition."""

    __tablename__ = "catalog_references"
    __table_args__ = (Index("ix_catalog_references_named", "kind", "name"),)

    #: The referrer's row (``catalog_objects.id``); its references go with it.
    referrer_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: The named object's kind and name.
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)


class RunRow(Base):
    """A run's record, written by the notifier from the run events."""

    __tablename__ = "runs"
    __table_args__ = (
        # The runs whose finish is still to handle (not final yet, or a finish in progress): the notifier's sweep.
        Index(
            "ix_runs_finish_unhandled",
            "finished_at",
            postgresql_where=text("finish_handled_at IS NULL"),
            sqlite_where=text("finish_handled_at IS NULL"),
        ),
    )

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    definition: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    trigger: Mapped[str | None] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(REQUESTED_BY_MAX))
    requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_of: Mapped[str | None] = mapped_column(String(36), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    extraction_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    extracted: Mapped[int] = mapped_column(Integer, default=0)
    batches_expected: Mapped[int | None] = mapped_column(Integer)
    batches_done: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    terminal_status: Mapped[str | None] = mapped_column(String(32))
    error_samples: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The run's definition by id, and that definition's business unit: for scoping runs. Migration 0002
    #: filled them in for the runs before it (null where the definition was gone by then).
    definition_id: Mapped[str | None] = mapped_column(String(36), index=True)
    business_unit: Mapped[str | None] = mapped_column(String(100))
    #: Change-mode counts (null for other runs) and members re-sent from earlier runs (migration 0008).
    added: Mapped[int | None] = mapped_column(Integer)
    changed: Mapped[int | None] = mapped_column(Integer)
    unchanged: Mapped[int | None] = mapped_column(Integer)
    removed: Mapped[int | None] = mapped_column(Integer)
    retried: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The run's request allowed it to remove more than ``sync.max_removed`` (migration 0013).
    mass_removal_allowed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: When the notifier handled the run's finish (failure threshold, auto-pause, final webhook, recovery notice,
    #: metrics): set after that work, so a finish interrupted halfway is handled again by the next event of the
    #: run. Null while the run is not final, and for a final run whose finish is still to handle (migration 0014
    #: set it on the runs final before it: handled by the release that finished them).
    finish_handled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The notifier replica doing the run's finish, and since when (migration 0015): one replica at a time; another
    #: takes the claim over once it is older than the lease (its holder died). The mark above ends the claim.
    finish_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finish_claimed_by: Mapped[str | None] = mapped_column(String(200))
    #: A replay run's publication (migration 0017; null and 0 for other runs): what it was recorded to send (members,
    #: batches, a digest of their records), how many of its steps Kafka acknowledged (1 run.started, 2 its batches,
    #: 3 run.extraction_completed), and the request publishing it now, since when (a lease).
    replay_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    replay_acknowledged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    replay_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_claimed_by: Mapped[str | None] = mapped_column(String(36))


class BatchOutcomeRow(Base):
    """One outcome per batch identity: the notifier's deduplication ledger."""

    __tablename__ = "batch_outcomes"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivered: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)


class ExtractionCheckpointRow(Base):
    """The extractor's progress through a run: resume point after a crash, and run-request dedup."""

    __tablename__ = "extraction_checkpoints"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    definition: Mapped[str] = mapped_column(String(100))
    last_key: Mapped[Any] = mapped_column(JSON, nullable=True)
    next_batch_index: Mapped[int] = mapped_column(Integer, default=0)
    members: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Incremental runs: the watermark slice (since, until] fixed when the run starts, so a resumed
    # run reads the same rows, and the watermark moves to ``until`` when the run succeeds.
    watermark_since: Mapped[Any] = mapped_column(JSON, nullable=True)
    watermark_until: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: A run split into key ranges (extracted by several replicas at once): how many; null when not split.
    ranges: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The run's sync mode and retry scope, fixed at its first start, and a change run's counts (RunSync).
    sync: Mapped[Any] = mapped_column(JSON, nullable=True)
    #: The run still going that held this scheduled run off when the scheduler withheld it (its overlap policy, skip;
    #: migration 0026): the run never starts. Null for any other run.
    withheld_for: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: The page being sent beyond ``last_key`` (its last key and the batch index after its batches), written ahead of
    #: its records (migration 0027): a resume re-reads exactly that page. Null: none (or an older release's run).
    sending: Mapped[Any] = mapped_column(JSON, nullable=True)


class ExtractionRangeRow(Base):
    """One key range of a split run: its bounds, its batch indexes, and where its extraction stands."""

    __tablename__ = "extraction_ranges"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    range_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Keys after ``lower`` (null: from the first) up to ``upper`` included (null: to the last).
    lower: Mapped[Any] = mapped_column(JSON, nullable=True)
    upper: Mapped[Any] = mapped_column(JSON, nullable=True)
    #: The range's batch indexes are [first_batch_index, end_batch_index): disjoint from the other ranges'.
    first_batch_index: Mapped[int] = mapped_column(Integer)
    end_batch_index: Mapped[int] = mapped_column(Integer)
    last_key: Mapped[Any] = mapped_column(JSON, nullable=True)
    next_batch_index: Mapped[int] = mapped_column(Integer)
    members: Mapped[int] = mapped_column(Integer)
    #: extracting, extracted (every member published), stopped (the run failed or was cancelled).
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: As the checkpoint's: the range's page being sent beyond ``last_key`` (migration 0027).
    sending: Mapped[Any] = mapped_column(JSON, nullable=True)


class WatermarkRow(Base):
    """An incremental definition's watermark: the highest value exported by a successful run."""

    __tablename__ = "watermarks"

    definition: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    run_id: Mapped[str] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NotificationRow(Base):
    """One row per (run, kind) of notification: what makes each email and webhook go out once.

    ``kind`` is an email's (``success``, ``error``, ``recovered``) or ``webhook:<channel>:<event>``;
    ``recipients`` the email's addresses or the webhook's channel. A webhook that failed is tried again
    at ``next_attempt_at`` (its backoff), and given up (``gave_up_at``) when its retry budget is spent. A claim for
    one attempt pushes ``next_attempt_at`` a lease ahead; a finish's claim also names its replica (``claimed_by``) and
    writes its lease's end (``claimed_until``): it is that replica's while ``next_attempt_at`` still equals it; and
    every claim (or renewal) writes its time (``claimed_at``): the replica takes back only a claim older than its
    process.
    """

    __tablename__ = "notifications"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(160), primary_key=True)
    recipients: Mapped[list[str]] = mapped_column(JSON)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gave_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: An email's recipients the SMTP server refused while it took it for the others: address -> [code, text]. Those
    #: refused for now (4xx) are mailed again alone (:func:`shared.domain.email_retries.refused_for_now`).
    refused_recipients: Mapped[dict[str, list[Any]] | None] = mapped_column(JSON)


class ScheduleRow(Base):
    """The scheduler's state of one definition: handled up to when, and when it is next due."""

    __tablename__ = "schedules"

    definition_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    definition_version: Mapped[int] = mapped_column(Integer)
    handled_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    #: The instant whose run request is being published: set before publishing, cleared as the schedule moves on.
    firing_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Why the fire times could not be computed (the error's type); null when they could. Kept until an edit.
    not_computable: Mapped[str | None] = mapped_column(String(100))
    #: A digest of the schedule last computed (migration 0023): an edit that leaves it equal keeps the schedule's
    #: place (where it was handled, the instant it was publishing). Null: unknown, the next edit counts as a schedule's.
    schedule_digest: Mapped[str | None] = mapped_column(String(64))


class LeaseRow(Base):
    """A named lease (scheduler leadership): who holds it, until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKeyRow(Base):
    """A run started through the admin API under an ``Idempotency-Key``: a retried call finds its run here."""

    __tablename__ = "idempotency_keys"

    #: SHA-256 of (caller, definition, key): the same key from another caller or for another definition is another call.
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One change of the catalog: who, when, what, and the object before and after (secrets masked)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100), index=True)
    #: The business units of the definitions the change touches (the scope a reader needs to see it).
    business_units: Mapped[list[str]] = mapped_column(JSON, default=list)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AttemptRow(Base):
    """One HTTP attempt the dispatcher's inspector kept (``shared.domain.attempts``): masked, bodies cut.

    The newest ``EXPORT_INSPECTOR_KEEP`` failed and as many successful per (definition, profile) are kept, none
    older than the retention. ``definition_id``: the definition's stable id when the row was written (its run's,
    else the one of that name): readers see a definition's rows by it, never a deleted namesake's.
    """

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_pair", "definition", "profile", "success", "id"),
        Index("ix_attempts_definition", "definition_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    definition: Mapped[str] = mapped_column(String(100))
    definition_id: Mapped[str | None] = mapped_column(String(36))
    profile: Mapped[str] = mapped_column(String(100))
    run_id: Mapped[str] = mapped_column(String(36))
    batch_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    method: Mapped[str] = mapped_column(String(10))
    url: Mapped[str] = mapped_column(Text)
    request_headers: Mapped[dict[str, str]] = mapped_column(JSON)
    request_body: Mapped[str] = mapped_column(Text)
    request_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    response_headers: Mapped[dict[str, str]] = mapped_column(JSON)
    response_body: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class DispatcherReplicaRow(Base):
    """A live dispatcher replica (its heartbeat): the replicas share each profile's limits (issue 17)."""

    __tablename__ = "dispatcher_replicas"

    replica_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: When it last beat, in Unix seconds (of its clock).
    beat_at: Mapped[float] = mapped_column(Float, index=True)
    #: The shares (membership) it has applied and is within: others take a larger share only once all have.
    drained_view: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CircuitBreakerRow(Base):
    """A profile's circuit breaker across the dispatcher replicas: its state, how many times it opened, and
    whether its last change was announced (what makes each opening and closing notified once)."""

    __tablename__ = "circuit_breakers"

    profile: Mapped[str] = mapped_column(String(100), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    episode: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The last change announced: 2 x episode for an opening, 2 x episode + 1 for its closing (None: none yet).
    announced: Mapped[int | None] = mapped_column(Integer, nullable=True)


class OpenBreakerRow(Base):
    """A profile whose breaker is open (or half-open) at one dispatcher replica, as it last reported it: the
    fleet's breaker is open while a live replica's is (a row unreported for the TTL no longer counts)."""

    __tablename__ = "open_breakers"

    replica_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: When the replica last said so, in Unix seconds (of its clock).
    seen_at: Mapped[float] = mapped_column(Float, index=True)


class BreakerMailRow(Base):
    """The email of one breaker change to one definition's error recipients: sent once, retried until sent."""

    __tablename__ = "circuit_breaker_mails"

    profile: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: The change (see CircuitBreakerRow.announced).
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[str] = mapped_column(String(100), primary_key=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: When the email is due again: a sweep's or a change's claim (a lease, on the catalog's clock); none: due.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The recipients the SMTP server refused while it took the email for the others, so far: address -> [code, text]
    #: (those refused for now mailed again alone by the sweep; migration 0024). None: none.
    refused_recipients: Mapped[dict[str, list[Any]] | None] = mapped_column(JSON, nullable=True)
