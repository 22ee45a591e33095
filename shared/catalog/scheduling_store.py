"""The scheduling store: the scheduler's state of each definition, and the leadership lease.

It reads the definitions' rows (id, version, spec) in the same statement as its own state: the fire
path joins them rather than asking the definitions store once per schedule. It never writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from pydantic import ValidationError
from sqlalchemy import Row, Table, bindparam, delete, func, insert, select, update

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.tables import CatalogObjectRow, LeaseRow, ScheduleRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule_state import (
    DueSchedule,
    FiringMark,
    ScheduleAdvance,
    ScheduleState,
    ScheduleSync,
)
from shared.domain.stored_rows import STORED_ROW

log = structlog.get_logger(__name__)


class SqlSchedulingStore:
    """Which definitions the scheduler has seen, when each is next due, and who leads."""

    #: Parsed definitions kept, by (id, version): a version changes with every edit, so an entry is
    #: never stale; bounded, the oldest forgotten first.
    MAX_PARSED = 50_000

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database
        self._parsed: dict[tuple[str, int], ExportDefinition | None] = {}

    def _definition(self, id_: str, version: int, spec: dict[str, Any]) -> ExportDefinition | None:
        """The definition of ``spec``, parsed once per (id, version): validating specs was the fire path's
        largest cost at a burst (4,000 due at once). None for a definition saved by an older release that
        this one's rules refuse: it is left out (logged once) rather than stopping every other schedule."""
        key = (id_, version)
        if key in self._parsed:
            return self._parsed[key]
        try:
            parsed: ExportDefinition | None = ExportDefinition.model_validate(spec, context={STORED_ROW: True})
        except ValidationError as exc:
            log.error(
                "definition unreadable: not scheduled until applied again", definition_id=id_, errors=exc.error_count()
            )
            parsed = None
        self._parsed[key] = parsed
        if len(self._parsed) > self.MAX_PARSED:
            self._parsed.pop(next(iter(self._parsed)))
        return parsed

    def _syncs(self, rows: Sequence[Row[CatalogObjectRow, ScheduleRow | None]]) -> list[ScheduleSync]:
        """The definitions of ``rows`` (each with the scheduler's state of it, if any), those this release reads."""
        return [
            ScheduleSync(
                definition_id=uuid.UUID(obj.id),
                definition=definition,
                version=obj.version,
                updated_at=aware(obj.updated_at) or now(),
                handled_until=aware(state.handled_until) if state else None,
                schedule_digest=state.schedule_digest if state else None,
                firing_for=aware(state.firing_for) if state else None,
            )
            for obj, state in rows
            if (definition := self._definition(obj.id, obj.version, obj.spec)) is not None
        ]

    def schedules_to_sync(self) -> list[ScheduleSync]:
        """Definitions the scheduler has not seen, or has seen at an older version (a timeout told as the schedules',
        as the due schedules' read is: the scheduler compares them at least once a minute)."""
        with self.database.transaction("Schedule") as session:
            rows = session.execute(
                select(CatalogObjectRow, ScheduleRow)
                .outerjoin(ScheduleRow, ScheduleRow.definition_id == CatalogObjectRow.id)
                .where(CatalogObjectRow.kind == ExportDefinition.__name__)
                .where(
                    (ScheduleRow.definition_id.is_(None)) | (ScheduleRow.definition_version != CatalogObjectRow.version)
                )
            ).all()
            return self._syncs(rows)

    def schedules_without_next(self) -> list[ScheduleSync]:
        """Definitions seen at their current version with no next instant and no error kept: disabled, ended, or not
        computable since before migration 0021 (which kept no error: the scheduler looks once per process, when it
        first leads, and keeps the error of those it finds)."""
        with self.database.transaction("Schedule") as session:
            rows = session.execute(
                select(CatalogObjectRow, ScheduleRow)
                .join(ScheduleRow, ScheduleRow.definition_id == CatalogObjectRow.id)
                .where(CatalogObjectRow.kind == ExportDefinition.__name__)
                .where(ScheduleRow.definition_version == CatalogObjectRow.version)
                .where(ScheduleRow.next_due_at.is_(None), ScheduleRow.not_computable.is_(None))
            ).all()
            return self._syncs(rows)

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
                "next_due_at": as_utc(state.next_due_at),
                "not_computable": state.not_computable,
                "schedule_digest": state.schedule_digest,
                "firing_for": as_utc(state.firing_for),
            }
            for state in states
        ]
        with self.database.begin("Schedule") as connection:
            connection.execute(delete(table).where(table.c.definition_id.in_([row["definition_id"] for row in rows])))
            connection.execute(insert(table), rows)

    def scheduled_count(self) -> int:
        """How many definitions the scheduler will fire again (enabled, with an instant ahead)."""
        with self.database.connect("Schedule") as connection:
            table = cast(Table, ScheduleRow.__table__)
            return int(connection.execute(select(func.count()).where(table.c.next_due_at.is_not(None))).scalar_one())

    def not_computable_count(self) -> int:
        """How many definitions have a schedule whose fire times could not be computed, as they are now (an edit not
        yet synced, or a definition deleted since, is not counted)."""
        objects, states = CatalogObjectRow.__table__.c, ScheduleRow.__table__.c
        with self.database.connect("Schedule") as connection:
            return int(
                connection.execute(
                    select(func.count())
                    .select_from(CatalogObjectRow.__table__)
                    .join(ScheduleRow.__table__, states.definition_id == objects.id)
                    .where(states.definition_version == objects.version, states.not_computable.is_not(None))
                ).scalar_one()
            )

    def due_schedules(self, at: datetime, limit: int = 10_000) -> list[DueSchedule]:
        """Definitions whose next due instant is at or before ``at``, soonest first.

        Plain rows (this runs on the fire path); a definition's spec is read and parsed only when this
        store has not parsed that version of it before.
        """
        objects, states = CatalogObjectRow.__table__.c, ScheduleRow.__table__.c
        with self.database.connect("Schedule") as connection:
            rows = connection.execute(
                select(objects.id, objects.version, states.handled_until, states.next_due_at, states.firing_for)
                .join_from(CatalogObjectRow.__table__, ScheduleRow.__table__, states.definition_id == objects.id)
                .where(states.next_due_at <= at.astimezone(UTC))
                .where(states.definition_version == objects.version)
                .order_by(states.next_due_at)
                .limit(limit)
            ).all()
            unknown = [row.id for row in rows if (row.id, row.version) not in self._parsed]
            specs: dict[str, Any] = {}
            for start in range(0, len(unknown), 1_000):
                specs.update(
                    connection.execute(
                        select(objects.id, objects.spec).where(objects.id.in_(unknown[start : start + 1_000]))
                    ).all()
                )
        return [
            DueSchedule(
                uuid.UUID(row.id),
                definition,
                aware(row.handled_until) or at,
                aware(row.next_due_at) or at,
                aware(row.firing_for),
            )
            for row in rows
            if (definition := self._definition(row.id, row.version, specs.get(row.id, {}))) is not None
        ]

    def mark_firing(self, marks: list[FiringMark]) -> None:
        """Record, before their run requests are published, the instant each schedule is firing (each only if no one
        moved it on since it was read): :meth:`advance_schedules` clears it, so one left behind is a publication not
        confirmed (the scheduler stopped, or the broker failed it). One statement executed for all."""
        if not marks:
            return
        table = cast(Table, ScheduleRow.__table__)
        statement = (
            update(table)
            .where(table.c.definition_id == bindparam("b_id"), table.c.handled_until == bindparam("b_expected"))
            .values(firing_for=bindparam("b_instant"))
        )
        parameters = [
            {
                "b_id": str(mark.definition_id),
                "b_expected": mark.expected_handled_until.astimezone(UTC),
                "b_instant": mark.instant.astimezone(UTC),
            }
            for mark in marks
        ]
        with self.database.begin("Schedule") as connection:
            connection.execute(statement, parameters)

    def advance_schedules(self, advances: list[ScheduleAdvance]) -> int:
        """Move schedules on, each only if no one else did since it was read (compare and set); the instant each was
        firing is cleared (its publication confirmed).

        One statement executed for all schedules; returns how many moved.
        """
        if not advances:
            return 0
        table = cast(Table, ScheduleRow.__table__)
        statement = (
            update(table)
            .where(table.c.definition_id == bindparam("b_id"), table.c.handled_until == bindparam("b_expected"))
            .values(
                handled_until=bindparam("b_handled"),
                next_due_at=bindparam("b_next"),
                firing_for=None,
                not_computable=bindparam("b_error"),
            )
        )
        parameters = [
            {
                "b_id": str(advance.definition_id),
                "b_expected": advance.expected_handled_until.astimezone(UTC),
                "b_handled": advance.handled_until.astimezone(UTC),
                "b_next": as_utc(advance.next_due_at),
                "b_error": advance.not_computable,
            }
            for advance in advances
        ]
        with self.database.begin("Schedule") as connection:
            return int(connection.execute(statement, parameters).rowcount)

    # --- the leadership lease ------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, at: datetime, ttl_seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``at + ttl``; False if another holds it."""
        at = at.astimezone(UTC)
        expires = at + timedelta(seconds=ttl_seconds)
        with self.database.transaction() as session:
            result = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, (LeaseRow.holder == holder) | (LeaseRow.expires_at <= at))
                .values(holder=holder, expires_at=expires)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return True
            # Nobody has ever held it, or someone else holds it: only the first case inserts.
            return self.database.insert_ignore(
                session, LeaseRow, {"name": name, "holder": holder, "expires_at": expires}
            )

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (on a clean shutdown) so another replica takes over at once."""
        with self.database.transaction() as session:
            session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.holder == holder)
                .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )
