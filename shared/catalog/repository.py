"""The catalog's one repository: every read and write of catalog state goes through :class:`Catalog`."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Engine, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.engine import make_engine
from shared.catalog.tables import (
    Base,
    BatchOutcomeRow,
    CatalogObjectRow,
    ExtractionCheckpointRow,
    IdempotencyKeyRow,
    LeaseRow,
    NotificationRow,
    RunRow,
    ScheduleRow,
    WatermarkRow,
)
from shared.domain.catalog_objects import CatalogObject, ExportDefinition, kind_of, stored_form
from shared.domain.runs import RunRecord, RunStatus, fold
from shared.events import AnyRunEvent, BatchOutcome

T = TypeVar("T", bound=CatalogObject)
ApplyResult = Literal["created", "updated", "unchanged"]


class NotFound(LookupError):
    """No catalog object of that kind and name."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' does not exist")
        self.kind, self.name = kind, name


@dataclass(frozen=True)
class Checkpoint:
    """Where an extraction stands: resume after ``last_key`` with batch ``next_batch_index``."""

    run_id: uuid.UUID
    last_key: Any
    next_batch_index: int
    members: int
    completed: bool
    watermark_since: Any = None
    watermark_until: Any = None


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite stores the wall time without its offset: every instant is stored in UTC.
    return value.astimezone(UTC) if value is not None else None


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Catalog:
    """Profiles, templates, queries, definitions, runs and the services' bookkeeping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> Catalog:
        catalog = cls(make_engine(url))
        if create:
            catalog.create_schema()
        return catalog

    def close(self) -> None:
        """Close the catalog's database connections."""
        self.engine.dispose()

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def _insert_ignore(self, session: Session, table: Any, values: dict[str, Any]) -> bool:
        """Insert a row unless its primary key exists; True when inserted.

        Uses ``ON CONFLICT DO NOTHING RETURNING``: whether a row comes back is the answer on every
        engine and driver (``rowcount`` is not reliable for ORM-enabled inserts).
        """
        backend = self.engine.dialect.name
        dialect_insert: Any
        if backend == "postgresql":
            dialect_insert = postgresql.insert
        elif backend == "sqlite":
            dialect_insert = sqlite.insert
        else:  # pragma: no cover - other engines are not supported for the catalog
            raise NotImplementedError(f"catalog on {backend} is not supported")
        key = next(iter(table.__table__.primary_key.columns))
        stmt = dialect_insert(table.__table__).values(**values).on_conflict_do_nothing().returning(key)
        return session.execute(stmt).first() is not None

    # --- catalog objects ---------------------------------------------------------------------------

    def apply(self, obj: CatalogObject) -> ApplyResult:
        """Create or update an object by kind and name; say which (or that nothing changed)."""
        spec = stored_form(obj)
        with self._session() as session:
            row = session.scalar(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind_of(obj), CatalogObjectRow.name == obj.name)
            )
            if row is None:
                now = _now()
                session.add(
                    CatalogObjectRow(
                        id=str(uuid.uuid4()),
                        kind=kind_of(obj),
                        name=obj.name,
                        spec=spec,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return "created"
            if row.spec == spec:
                return "unchanged"
            row.spec, row.version, row.updated_at = spec, row.version + 1, _now()
            return "updated"

    def get(self, kind: type[T], name: str) -> T:
        return self.get_with_id(kind, name)[1]

    def get_with_id(self, kind: type[T], name: str) -> tuple[uuid.UUID, T]:
        """An object and its stable id (ids survive updates; deterministic run ids use them)."""
        with self._session() as session:
            row = session.scalar(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind.__name__, CatalogObjectRow.name == name)
            )
            if row is None:
                raise NotFound(kind.__name__, name)
            return uuid.UUID(row.id), cast(T, kind.model_validate(row.spec))

    def list_objects(self, kind: type[T]) -> list[T]:
        with self._session() as session:
            rows = session.scalars(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind.__name__).order_by(CatalogObjectRow.name)
            )
            return [cast(T, kind.model_validate(row.spec)) for row in rows]

    def rename(self, old_name: str, obj: CatalogObject) -> None:
        """Replace object ``old_name`` of ``obj``'s kind by ``obj`` under its new name, keeping its id."""
        with self._session() as session:
            row = session.scalar(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind_of(obj), CatalogObjectRow.name == old_name)
            )
            if row is None:
                raise NotFound(kind_of(obj), old_name)
            row.name, row.spec, row.version, row.updated_at = obj.name, stored_form(obj), row.version + 1, _now()

    def delete(self, kind: type[CatalogObject], name: str) -> None:
        with self._session() as session:
            row = session.scalar(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind.__name__, CatalogObjectRow.name == name)
            )
            if row is None:
                raise NotFound(kind.__name__, name)
            session.delete(row)

    def scheduled_definitions(self) -> list[tuple[uuid.UUID, ExportDefinition]]:
        """Definitions whose schedule is enabled, with their ids."""
        with self._session() as session:
            rows = session.scalars(select(CatalogObjectRow).where(CatalogObjectRow.kind == ExportDefinition.__name__))
            definitions = [(uuid.UUID(row.id), ExportDefinition.model_validate(row.spec)) for row in rows]
        return [(id_, d) for id_, d in definitions if d.schedule.enabled]

    # --- runs --------------------------------------------------------------------------------------

    def fold_run_event(self, event: AnyRunEvent) -> tuple[RunRecord | None, RunRecord]:
        """Apply a run event to the run's record, atomically; a batch outcome counts once per batch.

        Returns the record before and after, so the caller can tell a run that has just finished.
        """
        with self._session() as session:
            row = session.get(RunRow, str(event.run_id), with_for_update=True)
            before = _record_from_row(row) if row else None
            duplicate = False
            if isinstance(event, BatchOutcome):
                duplicate = not self._insert_ignore(
                    session,
                    BatchOutcomeRow,
                    {
                        "run_id": str(event.run_id),
                        "batch_index": event.batch_index,
                        "delivered": event.delivered,
                        "failed": event.failed,
                        "status_code": event.status_code,
                    },
                )
            after = fold(
                before or RunRecord(run_id=event.run_id, definition=event.definition), event, duplicate=duplicate
            )
            if row is None:
                row = RunRow(run_id=str(event.run_id))
                session.add(row)
            _record_to_row(after, row)
            if after.status is RunStatus.SUCCEEDED and (before is None or before.status is not RunStatus.SUCCEEDED):
                self._advance_watermark(session, event.run_id)
            return before, after

    def _advance_watermark(self, session: Session, run_id: uuid.UUID) -> None:
        """Move an incremental definition's watermark to what its successful run covered.

        Compare-and-set on the value the run started from: a run that started before another
        incremental run succeeded does not move the watermark back (its members are exported again
        by the next run rather than skipped).
        """
        checkpoint = session.get(ExtractionCheckpointRow, str(run_id))
        if checkpoint is None or checkpoint.watermark_until is None:
            return
        current = session.get(WatermarkRow, checkpoint.definition, with_for_update=True)
        if current is None:
            if checkpoint.watermark_since is None:
                session.add(
                    WatermarkRow(
                        definition=checkpoint.definition,
                        value=checkpoint.watermark_until,
                        run_id=str(run_id),
                        updated_at=_now(),
                    )
                )
        elif current.value == checkpoint.watermark_since:
            current.value, current.run_id, current.updated_at = checkpoint.watermark_until, str(run_id), _now()

    def watermark(self, definition: str) -> Any:
        """An incremental definition's watermark (None before its first successful run)."""
        with self._session() as session:
            row = session.get(WatermarkRow, definition)
            return row.value if row else None

    def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        with self._session() as session:
            row = session.get(RunRow, str(run_id))
            return _record_from_row(row) if row else None

    def replays_of(self, run_id: uuid.UUID) -> list[RunRecord]:
        """The replay runs that re-sent ``run_id``'s dead letters, oldest first."""
        with self._session() as session:
            rows = session.scalars(select(RunRow).where(RunRow.replay_of == str(run_id)).order_by(RunRow.started_at))
            return [_record_from_row(row) for row in rows]

    def list_runs(
        self,
        definition: str | None = None,
        limit: int = 50,
        *,
        definitions: list[str] | None = None,
        statuses: list[RunStatus] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs, most recent first (by start, or by last event for runs not started), filtered."""
        when = func.coalesce(RunRow.started_at, RunRow.last_event_at)
        with self._session() as session:
            query = select(RunRow).order_by(when.desc(), RunRow.run_id).offset(offset).limit(limit)
            if definition:
                query = query.where(RunRow.definition == definition)
            if definitions is not None:
                query = query.where(RunRow.definition.in_(definitions))
            if statuses:
                query = query.where(RunRow.status.in_([status.value for status in statuses]))
            if since is not None:
                query = query.where(when >= _utc(since))
            if until is not None:
                query = query.where(when < _utc(until))
            return [_record_from_row(row) for row in session.scalars(query)]

    def record_requested_run(self, record: RunRecord) -> bool:
        """Record a run that was just requested (queued) unless it is known already; True when recorded."""
        with self._session() as session:
            if session.get(RunRow, str(record.run_id)) is not None:
                return False
            row = RunRow(run_id=str(record.run_id))
            _record_to_row(record, row)
            session.add(row)
            return True

    def claim_idempotency_key(self, caller: str, definition: str, key: str, run_id: uuid.UUID) -> uuid.UUID:
        """The run of an ``Idempotency-Key``: ``run_id`` when the key is new, else the run it started before."""
        scope = hashlib.sha256(f"{caller}\0{definition}\0{key}".encode()).hexdigest()
        with self._session() as session:
            values = {"scope": scope, "run_id": str(run_id), "created_at": _now()}
            if self._insert_ignore(session, IdempotencyKeyRow, values):
                return run_id
            existing = session.get(IdempotencyKeyRow, scope)
            assert existing is not None
            return uuid.UUID(existing.run_id)

    def unfinished_runs(self, limit: int = 1_000) -> list[RunRecord]:
        """Runs not final yet, least recently active first."""
        unfinished = [RunStatus.QUEUED.value, RunStatus.EXTRACTING.value, RunStatus.DISPATCHING.value]
        with self._session() as session:
            rows = session.scalars(
                select(RunRow).where(RunRow.status.in_(unfinished)).order_by(RunRow.last_event_at).limit(limit)
            )
            return [_record_from_row(row) for row in rows]

    def recent_final_statuses(self, definition: str, limit: int) -> list[RunStatus]:
        """The statuses of a definition's latest finished runs, newest first."""
        with self._session() as session:
            rows = session.scalars(
                select(RunRow.status)
                .where(RunRow.definition == definition, RunRow.finished_at.is_not(None))
                .order_by(RunRow.finished_at.desc())
                .limit(limit)
            )
            return [RunStatus(status) for status in rows]

    def pause_schedule(self, definition: str) -> bool:
        """Disable a definition's schedule (a new version, which the scheduler picks up); False if it was off."""
        current = self.get(ExportDefinition, definition)
        if not current.schedule.enabled:
            return False
        paused = current.model_copy(update={"schedule": current.schedule.model_copy(update={"enabled": False})})
        self.apply(paused)
        return True

    # --- notifications -----------------------------------------------------------------------------

    def unsent_notifications(self, limit: int = 100) -> list[tuple[uuid.UUID, str]]:
        """(run id, kind) of emails claimed but not sent yet (a failed SMTP, a crash in between)."""
        with self._session() as session:
            rows = session.execute(
                select(NotificationRow.run_id, NotificationRow.kind)
                .where(NotificationRow.sent_at.is_(None))
                .limit(limit)
            )
            return [(uuid.UUID(run_id), kind) for run_id, kind in rows]

    def claim_notification(self, run_id: uuid.UUID, kind: str, recipients: list[str]) -> bool:
        """True when this (run, kind) email has not been sent yet: the caller should send it."""
        with self._session() as session:
            self._insert_ignore(
                session, NotificationRow, {"run_id": str(run_id), "kind": kind, "recipients": recipients}
            )
            row = session.get(NotificationRow, (str(run_id), kind))
            return row is not None and row.sent_at is None

    def mark_notification(self, run_id: uuid.UUID, kind: str, *, error: str | None = None) -> None:
        """Record an email as sent, or the error of its last failed attempt."""
        with self._session() as session:
            row = session.get(NotificationRow, (str(run_id), kind))
            if row is None:
                return
            if error is None:
                row.sent_at, row.last_error = _now(), None
            else:
                row.last_error = error

    def notifications(self, run_id: uuid.UUID) -> dict[str, datetime | None]:
        with self._session() as session:
            rows = session.scalars(select(NotificationRow).where(NotificationRow.run_id == str(run_id)))
            return {row.kind: _aware(row.sent_at) for row in rows}

    # --- extraction checkpoints --------------------------------------------------------------------

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint:
        """The run's checkpoint, created at the start if new. ``completed`` means: do not extract again."""
        with self._session() as session:
            self._insert_ignore(
                session,
                ExtractionCheckpointRow,
                {
                    "run_id": str(run_id),
                    "definition": definition,
                    "next_batch_index": 0,
                    "members": 0,
                    "completed": False,
                    "updated_at": _now(),
                    "last_key": None,
                },
            )
            row = session.get(ExtractionCheckpointRow, str(run_id))
            assert row is not None
            return Checkpoint(
                run_id,
                row.last_key,
                row.next_batch_index,
                row.members,
                row.completed,
                row.watermark_since,
                row.watermark_until,
            )

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._session() as session:
            row = session.get(ExtractionCheckpointRow, str(checkpoint.run_id))
            assert row is not None, "save_checkpoint before claim_extraction"
            row.last_key = checkpoint.last_key
            row.next_batch_index = checkpoint.next_batch_index
            row.members = checkpoint.members
            row.completed = checkpoint.completed
            row.watermark_since = checkpoint.watermark_since
            row.watermark_until = checkpoint.watermark_until
            row.updated_at = _now()

    # --- schedules (the scheduler's state) ---------------------------------------------------------

    def definitions_fingerprint(self) -> tuple[int, datetime | None]:
        """(count, latest update) of export definitions: changes whenever one is created, edited or deleted."""
        with self._session() as session:
            count, latest = session.execute(
                select(func.count(), func.max(CatalogObjectRow.updated_at)).where(
                    CatalogObjectRow.kind == ExportDefinition.__name__
                )
            ).one()
            return int(count), _aware(latest)

    def schedules_to_sync(self) -> list[ScheduleSync]:
        """Definitions the scheduler has not seen, or has seen at an older version."""
        with self._session() as session:
            rows = session.execute(
                select(CatalogObjectRow, ScheduleRow)
                .outerjoin(ScheduleRow, ScheduleRow.definition_id == CatalogObjectRow.id)
                .where(CatalogObjectRow.kind == ExportDefinition.__name__)
                .where(
                    (ScheduleRow.definition_id.is_(None)) | (ScheduleRow.definition_version != CatalogObjectRow.version)
                )
            ).all()
            return [
                ScheduleSync(
                    definition_id=uuid.UUID(obj.id),
                    definition=ExportDefinition.model_validate(obj.spec),
                    version=obj.version,
                    updated_at=_aware(obj.updated_at) or _now(),
                    handled_until=_aware(state.handled_until) if state else None,
                )
                for obj, state in rows
            ]

    def save_schedules(self, states: list[ScheduleState]) -> None:
        """Record the scheduler's view of definitions (after a sync), in one transaction."""
        if not states:
            return
        table = cast(Table, ScheduleRow.__table__)
        rows = [
            {
                "definition_id": str(state.definition_id),
                "definition_version": state.version,
                "handled_until": state.handled_until.astimezone(UTC),
                "next_due_at": _utc(state.next_due_at),
            }
            for state in states
        ]
        with self.engine.begin() as connection:
            connection.execute(delete(table).where(table.c.definition_id.in_([row["definition_id"] for row in rows])))
            connection.execute(insert(table), rows)

    def scheduled_count(self) -> int:
        """How many definitions the scheduler will fire again (enabled, with an instant ahead)."""
        with self.engine.connect() as connection:
            table = cast(Table, ScheduleRow.__table__)
            return int(connection.execute(select(func.count()).where(table.c.next_due_at.is_not(None))).scalar_one())

    def due_schedules(self, now: datetime, limit: int = 10_000) -> list[DueSchedule]:
        """Definitions whose next due instant is at or before ``now``, soonest first."""
        objects, states = CatalogObjectRow.__table__.c, ScheduleRow.__table__.c
        with self.engine.connect() as connection:  # plain rows: this runs on the fire path
            rows = connection.execute(
                select(objects.id, objects.spec, states.handled_until, states.next_due_at)
                .join_from(CatalogObjectRow.__table__, ScheduleRow.__table__, states.definition_id == objects.id)
                .where(states.next_due_at <= now.astimezone(UTC))
                .where(states.definition_version == objects.version)
                .order_by(states.next_due_at)
                .limit(limit)
            ).all()
        return [
            DueSchedule(
                uuid.UUID(row.id),
                ExportDefinition.model_validate(row.spec),
                _aware(row.handled_until) or now,
                _aware(row.next_due_at) or now,
            )
            for row in rows
        ]

    def advance_schedules(self, advances: list[ScheduleAdvance]) -> int:
        """Move schedules on, each only if no one else did since it was read (compare and set).

        One statement executed for all schedules; returns how many moved.
        """
        if not advances:
            return 0
        table = cast(Table, ScheduleRow.__table__)
        statement = (
            update(table)
            .where(table.c.definition_id == bindparam("b_id"), table.c.handled_until == bindparam("b_expected"))
            .values(handled_until=bindparam("b_handled"), next_due_at=bindparam("b_next"))
        )
        parameters = [
            {
                "b_id": str(advance.definition_id),
                "b_expected": advance.expected_handled_until.astimezone(UTC),
                "b_handled": advance.handled_until.astimezone(UTC),
                "b_next": _utc(advance.next_due_at),
            }
            for advance in advances
        ]
        with self.engine.begin() as connection:
            return int(connection.execute(statement, parameters).rowcount)

    def active_runs(self, definitions: list[str]) -> dict[str, uuid.UUID]:
        """For each of ``definitions`` that has a run not yet finished, one such run."""
        if not definitions:
            return {}
        active = [RunStatus.QUEUED.value, RunStatus.EXTRACTING.value, RunStatus.DISPATCHING.value]
        with self._session() as session:
            rows = session.execute(
                select(RunRow.definition, RunRow.run_id).where(
                    RunRow.definition.in_(definitions), RunRow.status.in_(active)
                )
            ).all()
            return {definition: uuid.UUID(run_id) for definition, run_id in rows}

    # --- leases ------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl_seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``now + ttl``; False if another holds it."""
        now = now.astimezone(UTC)
        expires = now + timedelta(seconds=ttl_seconds)
        with self._session() as session:
            result = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, (LeaseRow.holder == holder) | (LeaseRow.expires_at <= now))
                .values(holder=holder, expires_at=expires)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return True
            # Nobody has ever held it, or someone else holds it: only the first case inserts.
            return self._insert_ignore(session, LeaseRow, {"name": name, "holder": holder, "expires_at": expires})

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (on a clean shutdown) so another replica takes over at once."""
        with self._session() as session:
            session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.holder == holder)
                .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )


@dataclass(frozen=True)
class ScheduleSync:
    """A definition whose schedule the scheduler must (re)compute."""

    definition_id: uuid.UUID
    definition: ExportDefinition
    version: int
    updated_at: datetime
    handled_until: datetime | None


@dataclass(frozen=True)
class ScheduleState:
    """The scheduler's view of one definition."""

    definition_id: uuid.UUID
    version: int
    handled_until: datetime
    next_due_at: datetime | None


@dataclass(frozen=True)
class DueSchedule:
    """A definition that is due."""

    definition_id: uuid.UUID
    definition: ExportDefinition
    handled_until: datetime
    next_due_at: datetime


@dataclass(frozen=True)
class ScheduleAdvance:
    """Move a schedule from ``expected_handled_until`` to ``handled_until`` / ``next_due_at``."""

    definition_id: uuid.UUID
    expected_handled_until: datetime
    handled_until: datetime
    next_due_at: datetime | None


def _record_from_row(row: RunRow) -> RunRecord:
    return RunRecord(
        run_id=uuid.UUID(row.run_id),
        definition=row.definition,
        trigger=row.trigger,
        requested_by=row.requested_by,
        scheduled_for=_aware(row.scheduled_for),
        replay_of=uuid.UUID(row.replay_of) if row.replay_of else None,
        started_at=_aware(row.started_at),
        extraction_complete=row.extraction_complete,
        extracted=row.extracted,
        batches_expected=row.batches_expected,
        batches_done=row.batches_done,
        delivered=row.delivered,
        failed=row.failed,
        failure_reason=row.failure_reason,
        terminal_status=RunStatus(row.terminal_status) if row.terminal_status else None,
        error_samples=tuple(row.error_samples or ()),
        last_event_at=_aware(row.last_event_at),
        finished_at=_aware(row.finished_at),
    )


def _record_to_row(record: RunRecord, row: RunRow) -> None:
    row.definition = record.definition
    row.status = record.status.value
    row.trigger = record.trigger
    row.requested_by = record.requested_by
    row.scheduled_for = record.scheduled_for
    row.replay_of = str(record.replay_of) if record.replay_of else None
    row.started_at = record.started_at
    row.extraction_complete = record.extraction_complete
    row.extracted = record.extracted
    row.batches_expected = record.batches_expected
    row.batches_done = record.batches_done
    row.delivered = record.delivered
    row.failed = record.failed
    row.failure_reason = record.failure_reason
    row.terminal_status = record.terminal_status.value if record.terminal_status else None
    row.error_samples = list(record.error_samples)
    row.last_event_at = record.last_event_at
    row.finished_at = record.finished_at
