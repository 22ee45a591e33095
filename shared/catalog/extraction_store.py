"""The extraction store: each run's extraction checkpoint (and its key ranges' when the run is split across
extractor replicas), and incremental definitions' watermarks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from sqlalchemy import Connection, Table, Update, bindparam, select, update

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.member_retries_store import claim_retries_in
from shared.catalog.tables import ExtractionCheckpointRow, ExtractionRangeRow, RunRow, WatermarkRow
from shared.domain.checkpoints import (
    Checkpoint,
    RangeCheckpoint,
    RangeState,
    RunClaim,
    RunStart,
    RunSync,
    RunTotals,
    SendingPage,
    watermark_after_success,
)
from shared.domain.runs import RunStatus

_CHECKPOINTS = cast(Table, ExtractionCheckpointRow.__table__)
#: How a run's sync is fixed at its first start: the checkpoint, and a save of it, to the checkpoint with its sync.
SyncFix = Callable[[Checkpoint, Callable[[Checkpoint], None]], Checkpoint]


def _new_checkpoint_row(run_id: uuid.UUID, definition: str, moment: Any) -> dict[str, Any]:
    """The checkpoint row of a run at its first claim: nothing read, no sync fixed."""
    return {
        "run_id": str(run_id),
        "definition": definition,
        "next_batch_index": 0,
        "members": 0,
        "completed": False,
        "updated_at": moment,
        "last_key": None,
    }


class SqlExtractionStore:
    """Where each run's extraction stands (the resume point, and run-request deduplication)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint:
        """The run's checkpoint, created at the start if new. ``completed`` means: do not extract again."""
        with self.database.transaction() as session:
            return self._claimed(session.connection(), run_id, definition)

    def claim_run(
        self,
        run_id: uuid.UUID,
        definition: str,
        *,
        fix_sync: SyncFix | None = None,
        take_retries: Callable[[Checkpoint], bool] | None = None,
        stop_on: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED}),
    ) -> RunClaim:
        """A run's start in one transaction: its checkpoint claimed (as :meth:`claim_extraction`), its run
        record's status read, and, unless it is done or its status is in ``stop_on``: its sync fixed by
        ``fix_sync`` (the extractor's rule, ``run_sync.fixed_sync``, given a save into this transaction) and,
        once fixed, if ``take_retries`` says so for it, the definition's pending retries claimed (the retries
        store's rule, :func:`claim_retries_in`: a resume reads the same share). Claiming again is harmless.
        Core statements (no ORM objects): a burst of small runs spends its time in the catalog."""
        with self.database.transaction() as session:
            connection = session.connection()
            checkpoint = self._claimed(connection, run_id, definition)
            first_start = checkpoint.sync is None
            if checkpoint.completed:
                return RunClaim(checkpoint, first_start)
            value = connection.scalar(select(RunRow.status).where(RunRow.run_id == str(run_id)))
            status = RunStatus(value) if value is not None else None
            if status in stop_on:
                return RunClaim(checkpoint, first_start, status)
            if fix_sync is not None:

                def save(fixed: Checkpoint) -> None:  # in the claim's transaction
                    connection.execute(_saved(fixed))

                checkpoint = fix_sync(checkpoint, save)
            retries = None
            if checkpoint.sync is not None and take_retries is not None and take_retries(checkpoint):
                retries = claim_retries_in(session, run_id, definition)
            return RunClaim(checkpoint, first_start, status, retries)

    def start_runs(
        self,
        starts: Sequence[RunStart],
        announce: Callable[[list[Checkpoint]], None],
        *,
        stop_on: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED}),
    ) -> list[Checkpoint]:
        """Start many runs in one transaction (a burst's): each one's checkpoint claimed (as :meth:`claim_run`),
        and those at their first start (no sync fixed), not done and whose run record's status is not in
        ``stop_on`` get their sync fixed by their ``fix_sync`` (the rule :meth:`claim_run` applies), marked
        ``announced``; ``announce`` is called with their checkpoints before the transaction commits (the
        extractor publishes their ``run.started`` there and waits for the broker): a sync marked announced means
        the start was acknowledged; should ``announce`` fail, nothing is recorded. The others are left as they
        were, for the one-by-one claim to tell (a resume, a cancelled or finished run). Retries are not claimed
        here: the run's claim when its extraction begins takes them, as it does for a resume.

        Returns the checkpoints of the runs started. Four statements whatever the number of runs (Core, the
        inserts and the updates each sent as one ``executemany``)."""
        unique = list({start.run_id: start for start in starts}.values())
        if not unique:
            return []
        ids = [str(start.run_id) for start in unique]
        moment = now()
        with self.database.transaction() as session:
            connection = session.connection()
            new = [_new_checkpoint_row(start.run_id, start.definition, moment) for start in unique]
            connection.execute(self.database.dialect_insert(_CHECKPOINTS).on_conflict_do_nothing(), new)
            rows = connection.execute(select(_CHECKPOINTS).where(_CHECKPOINTS.c.run_id.in_(ids))).all()
            checkpoints = {row.run_id: _checkpoint(row) for row in rows}
            statuses = {
                row.run_id: row.status
                for row in connection.execute(select(RunRow.run_id, RunRow.status).where(RunRow.run_id.in_(ids)))
            }
            started: list[Checkpoint] = []
            for start in unique:
                checkpoint = checkpoints[str(start.run_id)]
                status = statuses.get(str(start.run_id))
                if checkpoint.completed or checkpoint.sync is not None:
                    continue
                if status is not None and RunStatus(status) in stop_on:
                    continue
                fixed = start.fix_sync(checkpoint, lambda _fixed: None)  # saved below, with all the others
                if fixed.sync is None:
                    continue
                started.append(replace(fixed, sync=replace(fixed.sync, announced=True)))
            if started:
                connection.execute(
                    update(_CHECKPOINTS)
                    .where(_CHECKPOINTS.c.run_id == bindparam("started_run"))
                    .values(sync=bindparam("started_sync", type_=_CHECKPOINTS.c.sync.type), updated_at=moment),
                    [
                        {"started_run": str(c.run_id), "started_sync": c.sync.as_json()}
                        for c in started
                        if c.sync is not None
                    ],
                )
                announce(started)
            return started

    def _claimed(self, connection: Connection, run_id: uuid.UUID, definition: str) -> Checkpoint:
        """The run's checkpoint row, inserted if new (one statement then: the insert returns it)."""
        values = _new_checkpoint_row(run_id, definition, now())
        insert = self.database.dialect_insert(_CHECKPOINTS).values(**values).on_conflict_do_nothing()
        row = connection.execute(insert.returning(*_CHECKPOINTS.c)).first()
        if row is None:
            row = connection.execute(select(_CHECKPOINTS).where(_CHECKPOINTS.c.run_id == str(run_id))).one()
        return _checkpoint(row)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Save where the run stands: one UPDATE (the extractor saves one a page, so no ORM load first)."""
        with self.database.begin("ExtractionCheckpoint", str(checkpoint.run_id)) as connection:
            updated = connection.execute(_saved(checkpoint)).rowcount
        assert updated == 1, "save_checkpoint before claim_extraction"

    def plan_ranges(self, run_id: uuid.UUID, ranges: list[RangeCheckpoint]) -> list[RangeCheckpoint]:
        """Split the run into ``ranges``, unless it was split before: the run's ranges as stored (one plan a run,
        whoever asks twice)."""
        with self.database.transaction() as session:
            run = session.get(ExtractionCheckpointRow, str(run_id), with_for_update=True)
            assert run is not None, "plan_ranges before claim_extraction"
            if run.ranges is None:
                run.ranges, run.updated_at = len(ranges), now()
                session.add_all(
                    ExtractionRangeRow(
                        run_id=str(run_id),
                        range_index=r.range_index,
                        lower=r.lower,
                        upper=r.upper,
                        first_batch_index=r.first_batch_index,
                        end_batch_index=r.end_batch_index,
                        last_key=r.last_key,
                        next_batch_index=r.next_batch_index,
                        members=r.members,
                        state=r.state.value,
                        updated_at=now(),
                    )
                    for r in ranges
                )
                session.flush()
            rows = session.scalars(
                select(ExtractionRangeRow)
                .where(ExtractionRangeRow.run_id == str(run_id))
                .order_by(ExtractionRangeRow.range_index)
            ).all()
            return [_range(row) for row in rows]

    def run_ranges(self, run_id: uuid.UUID) -> list[RangeCheckpoint]:
        """The key ranges of a split run, in key order (none when it was not split)."""
        with self.database.transaction() as session:
            rows = session.scalars(
                select(ExtractionRangeRow)
                .where(ExtractionRangeRow.run_id == str(run_id))
                .order_by(ExtractionRangeRow.range_index)
            ).all()
            return [_range(row) for row in rows]

    def range_checkpoint(self, run_id: uuid.UUID, range_index: int) -> RangeCheckpoint | None:
        """Where one range of a split run stands (None: no such range)."""
        with self.database.transaction() as session:
            row = session.get(ExtractionRangeRow, (str(run_id), range_index))
            return _range(row) if row is not None else None

    def save_range(self, checkpoint: RangeCheckpoint) -> bool:
        """Save a range's progress, only forward: a second extractor of the same range (a redelivered task)
        never moves it back, nor reopens a range that is over. False when nothing was saved."""
        statement = (
            update(ExtractionRangeRow)
            .where(
                ExtractionRangeRow.run_id == str(checkpoint.run_id),
                ExtractionRangeRow.range_index == checkpoint.range_index,
                ExtractionRangeRow.state == RangeState.EXTRACTING.value,
                ExtractionRangeRow.next_batch_index <= checkpoint.next_batch_index,
            )
            .values(
                last_key=checkpoint.last_key,
                next_batch_index=checkpoint.next_batch_index,
                members=checkpoint.members,
                sending=None if checkpoint.sending is None else checkpoint.sending.as_json(),
                updated_at=now(),
            )
        )
        with self.database.begin("ExtractionCheckpoint", str(checkpoint.run_id)) as connection:
            return bool(connection.execute(statement).rowcount)

    def finish_range(self, checkpoint: RangeCheckpoint, state: RangeState) -> RunTotals | None:
        """End a range (``extracted`` or ``stopped``); the run's totals when this makes every range extracted.

        One transaction, the range written first and the run's row locked before the ranges are read: two
        ranges ending at once cannot both miss that the other one ended. Ending a range again is harmless
        (a redelivered task): an extracted range stays extracted, and the totals are told again.
        """
        with self.database.transaction() as session:
            values: dict[str, Any] = {"state": state.value, "updated_at": now()}
            if state is RangeState.EXTRACTED:
                values |= {
                    "last_key": checkpoint.last_key,
                    "next_batch_index": checkpoint.next_batch_index,
                    "members": checkpoint.members,
                }
            session.execute(
                update(ExtractionRangeRow)
                .where(
                    ExtractionRangeRow.run_id == str(checkpoint.run_id),
                    ExtractionRangeRow.range_index == checkpoint.range_index,
                    ExtractionRangeRow.state == RangeState.EXTRACTING.value,
                )
                .values(**values)
            )
            session.get(ExtractionCheckpointRow, str(checkpoint.run_id), with_for_update=True)
            rows = session.scalars(
                select(ExtractionRangeRow).where(ExtractionRangeRow.run_id == str(checkpoint.run_id))
            ).all()
            if not rows or any(row.state != RangeState.EXTRACTED.value for row in rows):
                return None
            return RunTotals(
                members=sum(row.members for row in rows),
                batches=sum(row.next_batch_index - row.first_batch_index for row in rows),
            )

    def watermark(self, definition: str) -> Any:
        """An incremental definition's watermark (None before its first successful run)."""
        with self.database.transaction() as session:
            row = session.get(WatermarkRow, definition)
            return row.value if row else None

    def advance_watermark(self, run_id: uuid.UUID) -> bool:
        """Move the run's definition's watermark to what the (successful) run covered; True when it moved.

        One transaction, the watermark row locked: the rule (:func:`watermark_after_success`) is a
        compare-and-set on the value the run started from, so calling this again is harmless.
        """
        with self.database.transaction() as session:
            checkpoint = session.get(ExtractionCheckpointRow, str(run_id))
            if checkpoint is None:
                return False
            current = session.get(WatermarkRow, checkpoint.definition, with_for_update=True)
            move = watermark_after_success(
                exists=current is not None,
                current=current.value if current else None,
                since=checkpoint.watermark_since,
                until=checkpoint.watermark_until,
            )
            if move is None:
                return False
            if current is None:
                session.add(
                    WatermarkRow(
                        definition=checkpoint.definition, value=move.value, run_id=str(run_id), updated_at=now()
                    )
                )
            else:
                current.value, current.run_id, current.updated_at = move.value, str(run_id), now()
            return True


def _range(row: ExtractionRangeRow) -> RangeCheckpoint:
    return RangeCheckpoint(
        run_id=uuid.UUID(row.run_id),
        range_index=row.range_index,
        lower=row.lower,
        upper=row.upper,
        first_batch_index=row.first_batch_index,
        end_batch_index=row.end_batch_index,
        next_batch_index=row.next_batch_index,
        last_key=row.last_key,
        members=row.members,
        state=RangeState(row.state),
        sending=SendingPage.of_json(row.sending),
    )


def withhold_start(database: CatalogDatabase, run_id: uuid.UUID, definition: str, active: uuid.UUID) -> bool:
    """Keep the run ``run_id`` from ever starting, unless an extractor claimed it first; True when it never starts.

    Its checkpoint is recorded done before any extractor claims it (an insert that does nothing when one exists),
    with ``active``, the run that holds it off (``withheld_for``): a request of it read afterwards starts nothing, as
    for a run extracted (``claim_run``, ``start_runs``). One found done with no sync fixed never started either (kept
    before, or judged not to start by an extractor). False when an extractor claimed it first: it started, or is being
    judged at its instant. The checkpoint's primary key orders this against an extractor's claim of the same run on
    every catalog."""
    values = _new_checkpoint_row(run_id, definition, now()) | {"completed": True, "withheld_for": str(active)}
    with database.begin("ExtractionCheckpoint", str(run_id)) as connection:
        insert = database.dialect_insert(_CHECKPOINTS).values(**values).on_conflict_do_nothing()
        if connection.execute(insert.returning(_CHECKPOINTS.c.run_id)).first() is not None:
            return True
        found = _checkpoint(connection.execute(select(_CHECKPOINTS).where(_CHECKPOINTS.c.run_id == str(run_id))).one())
        return found.completed and found.sync is None


def withheld_runs(database: CatalogDatabase, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Of ``run_ids``, those withheld (:func:`withhold_start`), each with the run that held it off then."""
    found: dict[uuid.UUID, uuid.UUID] = {}
    ids = [str(run_id) for run_id in run_ids]
    with database.connect("ExtractionCheckpoint") as connection:
        for start in range(0, len(ids), 1_000):  # well under every driver's bound on parameters
            rows = connection.execute(
                select(_CHECKPOINTS.c.run_id, _CHECKPOINTS.c.withheld_for).where(
                    _CHECKPOINTS.c.run_id.in_(ids[start : start + 1_000]), _CHECKPOINTS.c.withheld_for.is_not(None)
                )
            )
            found.update({uuid.UUID(run_id): uuid.UUID(active) for run_id, active in rows})
    return found


def _checkpoint(row: Any) -> Checkpoint:
    """The checkpoint a row of ``extraction_checkpoints`` holds (an ORM object or a Core row)."""
    return Checkpoint(
        uuid.UUID(row.run_id),
        row.last_key,
        row.next_batch_index,
        row.members,
        row.completed,
        row.watermark_since,
        row.watermark_until,
        row.ranges,
        RunSync.of_json(row.sync),
        uuid.UUID(row.withheld_for) if row.withheld_for else None,
        SendingPage.of_json(row.sending),
    )


def _saved(checkpoint: Checkpoint) -> Update:
    """The UPDATE that saves ``checkpoint``."""
    return (
        update(ExtractionCheckpointRow)
        .where(ExtractionCheckpointRow.run_id == str(checkpoint.run_id))
        .values(
            last_key=checkpoint.last_key,
            next_batch_index=checkpoint.next_batch_index,
            members=checkpoint.members,
            completed=checkpoint.completed,
            watermark_since=checkpoint.watermark_since,
            watermark_until=checkpoint.watermark_until,
            sync=None if checkpoint.sync is None else checkpoint.sync.as_json(),
            sending=None if checkpoint.sending is None else checkpoint.sending.as_json(),
            updated_at=now(),
        )
    )
