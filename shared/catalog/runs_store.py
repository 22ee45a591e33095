"""The runs store: run records, the batch-outcome ledger, notification claims and idempotency keys."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import ColumnElement, case, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.extraction_store import withheld_runs, withhold_start
from shared.catalog.lease_claims import MAX_CLAIMS, LeaseClaims, RowKey, catalog_now, in_key_order, read_catalog_now
from shared.catalog.member_retries_store import MemberCreatedMeanwhile
from shared.catalog.tables import BatchOutcomeRow, CatalogObjectRow, IdempotencyKeyRow, NotificationRow, RunRow
from shared.domain.email_retries import EarlierSends, NotificationMark, RefusedRecipients, refusals
from shared.domain.replay import ALL_ACKNOWLEDGED, ReplayPlan, ReplayPublication
from shared.domain.runs import (
    Claimant,
    RunNotification,
    RunRecord,
    RunStatus,
    StartClaims,
    fold,
    notification_status,
)
from shared.events import AnyRunEvent, BatchOutcome

#: Most transactions one poll's fold takes: one more for each run it creates that another fold (a replica folding
#: the same records after a rebalance) created meanwhile; done again, it finds that run and locks it. (A member's retry
#: row written meanwhile is a guard only: folds refusing a definition's members hold its lock exclusively, so they
#: create those rows one after the other.) Should a poll's fold meet more (three other folds creating its runs at
#: those moments), its events are folded one by one: each creates one run, so it needs one more transaction at most.
FOLD_ATTEMPTS = 3

log = structlog.get_logger(__name__)

R = TypeVar("R")

UNFINISHED = [RunStatus.QUEUED.value, RunStatus.EXTRACTING.value, RunStatus.DISPATCHING.value]
FINAL = [status.value for status in RunStatus if status.is_final]


class OutcomeFollower(Protocol):
    """Per-member state that follows batch outcomes (delivery log, change snapshot, next-run retries).

    Called inside the fold's transaction with the outcomes the ledger counted for the first time, so
    what it writes commits with the run's accounting, once per batch.
    """

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """Write what ``outcomes`` (new to the ledger) change, in ``session``."""


class SqlRunsStore:
    """What is known of every run, and the ledgers that make outcomes count and emails go out once."""

    def __init__(self, database: CatalogDatabase, followers: Sequence[OutcomeFollower] = ()) -> None:
        self.database = database
        self.followers = list(followers)
        #: The claims of unsent notifications (a lease on their next attempt time; a finish's name its replica).
        self._claims = LeaseClaims(
            database,
            NotificationRow,
            [NotificationRow.run_id, NotificationRow.kind],
            NotificationRow.next_attempt_at,
            [NotificationRow.sent_at.is_(None), NotificationRow.gave_up_at.is_(None)],
            owner=(NotificationRow.claimed_by, NotificationRow.claimed_until, NotificationRow.claimed_at),
            kind="Run",
            carried=[NotificationRow.refused_recipients, NotificationRow.attempts],
        )

    def _follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        if outcomes:
            for follower in self.followers:
                follower.follow(session, outcomes)

    def _catalog_now(self, seconds_ago: float = 0.0) -> Any:
        """The catalog's clock (minus ``seconds_ago``) as an SQL expression (:func:`catalog_now`): finish claims and
        their leases are judged on one clock for every replica, not on each replica's own."""
        return catalog_now(self.database, seconds_ago)

    def catalog_clock(self) -> datetime:
        """The catalog's clock now, read once (:func:`read_catalog_now`): a notifier's start, for its
        :class:`Claimant`."""
        return read_catalog_now(self.database)

    # --- run records ---------------------------------------------------------------------------------

    def fold_run_event(
        self, event: AnyRunEvent, starts: StartClaims | None = None
    ) -> tuple[RunRecord | None, RunRecord]:
        """Apply a run event to the run's record, atomically; a batch outcome counts once per batch. When the event
        starts the run, ``starts``' notifications of its definition are claimed in the same transaction.

        Returns the record before and after, so the caller can tell a run that has just finished.
        """
        return _again_if_run_created_meanwhile(lambda: self._fold_run_event(event, starts))

    def _fold_run_event(self, event: AnyRunEvent, starts: StartClaims | None) -> tuple[RunRecord | None, RunRecord]:
        """:meth:`fold_run_event` once: one transaction."""
        with self.database.transaction("Run") as session:
            row = session.get(RunRow, str(event.run_id), with_for_update=True)
            before = record_of(row) if row else None
            duplicate = False
            if isinstance(event, BatchOutcome):
                duplicate = not self.database.insert_ignore(
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
                if not duplicate:
                    self._follow(session, [event])
            after = fold(before or self._new_record(session, event), event, duplicate=duplicate)
            if row is None:
                row = RunRow(run_id=str(event.run_id))
                session.add(row)
            write_record(after, row)
            inserted = self._claim_starts(session, {event.run_id: (before, after)}, starts)
        _known_at_insert(starts, inserted)
        return before, after

    def fold_run_events(
        self, events: Sequence[AnyRunEvent], starts: StartClaims | None = None
    ) -> dict[uuid.UUID, tuple[RunRecord | None, RunRecord]]:
        """Apply a poll's events to their runs in one transaction; per run, its record before and after them.

        The same exact accounting as :meth:`fold_run_event` one event at a time (the ledger counts each
        batch outcome once, also within the poll), for a round trip and a commit per poll, not per event; and the
        same claims of ``starts``' notifications for the runs the poll starts.
        """
        if not events:
            return {}
        return _again_if_run_created_meanwhile(lambda: self._fold_run_events(events, starts))

    def _fold_run_events(
        self, events: Sequence[AnyRunEvent], starts: StartClaims | None
    ) -> dict[uuid.UUID, tuple[RunRecord | None, RunRecord]]:
        """:meth:`fold_run_events` once: one transaction."""
        run_ids = sorted({str(event.run_id) for event in events})
        with self.database.transaction("Run") as session:
            rows = {
                row.run_id: row
                # In key order (not the plan's: see in_key_order), as every multi-row update of runs locks them.
                for row in session.scalars(
                    select(RunRow).where(RunRow.run_id.in_(run_ids)).order_by(RunRow.run_id).with_for_update()
                )
            }
            first_of: dict[tuple[str, int], int] = {}
            for position, event in enumerate(events):
                if isinstance(event, BatchOutcome):
                    first_of.setdefault((str(event.run_id), event.batch_index), position)
            outcomes = [event for event in (events[p] for p in first_of.values()) if isinstance(event, BatchOutcome)]
            new_outcomes = self._record_outcomes(session, outcomes)
            self._follow(session, [o for o in outcomes if (str(o.run_id), o.batch_index) in new_outcomes])
            results: dict[uuid.UUID, tuple[RunRecord | None, RunRecord]] = {}
            for position, event in enumerate(events):
                key = str(event.run_id)
                row = rows.get(key)
                before = results[event.run_id][1] if event.run_id in results else (record_of(row) if row else None)
                duplicate = False
                if isinstance(event, BatchOutcome):
                    identity = (key, event.batch_index)
                    duplicate = first_of[identity] != position or identity not in new_outcomes
                after = fold(before or self._new_record(session, event), event, duplicate=duplicate)
                initial = results[event.run_id][0] if event.run_id in results else before
                results[event.run_id] = (initial, after)
            # New runs added (and so inserted) in key order, as the ledger's rows and the notifications claimed.
            for run_id, (_, after) in sorted(results.items(), key=lambda item: str(item[0])):
                row = rows.get(str(run_id))
                if row is None:
                    row = RunRow(run_id=str(run_id))
                    session.add(row)
                write_record(after, row)
            inserted = self._claim_starts(session, results, starts)
        _known_at_insert(starts, inserted)
        return results

    def _claim_starts(
        self,
        session: Session,
        folded: dict[uuid.UUID, tuple[RunRecord | None, RunRecord]],
        starts: StartClaims | None,
    ) -> list[tuple[uuid.UUID, str]]:
        """In the fold's transaction: claim ``starts``' notifications of the runs this fold started (their
        ``started_at`` set now), not due for a retry before ``starts.held_until`` (their first sender's time). Those
        it inserted (their rows new: never tried), by (run id, kind)."""
        inserted: list[tuple[uuid.UUID, str]] = []
        if starts is None:
            return inserted
        held_until = as_utc(starts.held_until)
        # In key order (run, kind): two folds claiming the same new runs' notifications wait for each other in one
        # order, never each for the other.
        for run_id, (before, after) in sorted(folded.items(), key=lambda item: str(item[0])):
            if after.started_at is None or (before is not None and before.started_at is not None):
                continue
            for kind, recipients in sorted(starts.kinds.get(after.definition, ()), key=lambda pair: pair[0]):
                values = {"run_id": str(run_id), "kind": kind, "recipients": recipients, "next_attempt_at": held_until}
                if self.database.insert_ignore(session, NotificationRow, values):
                    inserted.append((run_id, kind))
        return inserted

    def _record_outcomes(self, session: Session, outcomes: list[BatchOutcome]) -> set[tuple[str, int]]:
        """Insert outcomes into the ledger (one statement); the (run, batch) identities that were new."""
        if not outcomes:
            return set()
        table = BatchOutcomeRow.__table__
        rows = [
            {
                "run_id": str(o.run_id),
                "batch_index": o.batch_index,
                "delivered": o.delivered,
                "failed": o.failed,
                "status_code": o.status_code,
            }
            # In key order: two folds inserting the same new outcomes wait for each other in one order, never each
            # for the other (PostgreSQL's insert of a key another has inserted and not committed waits for it).
            for o in sorted(outcomes, key=lambda o: (str(o.run_id), o.batch_index))
        ]
        dialect: Any = postgresql if self.database.engine.dialect.name == "postgresql" else sqlite
        new: set[tuple[str, int]] = set()
        for start in range(0, len(rows), 1_000):  # well under every driver's bound on parameters
            statement = (
                dialect.insert(table)
                .values(rows[start : start + 1_000])
                .on_conflict_do_nothing()
                .returning(table.c.run_id, table.c.batch_index)
            )
            new |= {(run_id, index) for run_id, index in session.execute(statement)}
        return new

    @staticmethod
    def _new_record(session: Session, event: AnyRunEvent) -> RunRecord:
        """The record of a run first heard of through an event: scoped by its definition as it is now.

        Reads the definitions' row (id and business unit) in the same transaction; a run of a
        definition that no longer exists stays unscoped (only unscoped tokens see it).
        """
        found = session.execute(
            select(CatalogObjectRow.id, CatalogObjectRow.spec).where(
                CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name == event.definition
            )
        ).first()
        if found is None:
            return RunRecord(run_id=event.run_id, definition=event.definition)
        return RunRecord(
            run_id=event.run_id,
            definition=event.definition,
            definition_id=uuid.UUID(found.id),
            business_unit=(found.spec or {}).get("business_unit"),
        )

    def withhold_start(self, run_id: uuid.UUID, definition: str, active: uuid.UUID) -> bool:
        """Keep the run ``run_id`` of ``definition`` from starting unless an extractor claimed it first, held off by
        the run ``active``; True when it never starts (:func:`shared.catalog.extraction_store.withhold_start`): the
        scheduler's skip of a run whose first request may still be in Kafka."""
        return withhold_start(self.database, run_id, definition, active)

    def withheld_runs(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """Of ``run_ids``, those kept from starting by :meth:`withhold_start`, each with the run that held it off."""
        return withheld_runs(self.database, run_ids)

    def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        with self.database.transaction("Run", str(run_id)) as session:
            row = session.get(RunRow, str(run_id))
            return record_of(row) if row else None

    def business_units_of(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        """The business unit of each of ``run_ids`` recorded (unknown runs are left out): a few queries for any
        number of runs (a listing's scope), not one per run."""
        units: dict[uuid.UUID, str | None] = {}
        texts = _id_texts(run_ids)
        with self.database.connect("Run") as connection:
            # In slices: SQLite bounds a statement's parameters (32,766 at most; older builds 999).
            for start in range(0, len(texts), _IDS_PER_QUERY):
                rows = connection.execute(
                    select(RunRow.run_id, RunRow.business_unit).where(
                        RunRow.run_id.in_(texts[start : start + _IDS_PER_QUERY])
                    )
                )
                units.update((uuid.UUID(run_id), unit) for run_id, unit in rows)
        return units

    def replays_of(self, run_id: uuid.UUID) -> list[RunRecord]:
        """The replay runs that re-sent ``run_id``'s dead letters, oldest first."""
        with self.database.transaction("Run") as session:
            rows = session.scalars(select(RunRow).where(RunRow.replay_of == str(run_id)).order_by(RunRow.started_at))
            return [record_of(row) for row in rows]

    def list_runs(
        self,
        definition: str | None = None,
        limit: int = 50,
        *,
        definition_id: uuid.UUID | None = None,
        business_units: frozenset[str] | None = None,
        definitions: list[str] | None = None,
        statuses: list[RunStatus] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs, most recent first (by start, or by last event for runs not started), filtered."""
        when = func.coalesce(RunRow.started_at, RunRow.last_event_at)
        with self.database.transaction("Run") as session:
            query = select(RunRow).order_by(when.desc(), RunRow.run_id).offset(offset).limit(limit)
            if definition:
                query = query.where(RunRow.definition == definition)
            if definition_id is not None:
                query = query.where(RunRow.definition_id == str(definition_id))
            if business_units is not None:
                query = query.where(RunRow.business_unit.in_(sorted(business_units)))
            if definitions is not None:
                query = query.where(RunRow.definition.in_(definitions))
            if statuses:
                query = query.where(RunRow.status.in_([status.value for status in statuses]))
            if since is not None:
                query = query.where(when >= as_utc(since))
            if until is not None:
                query = query.where(when < as_utc(until))
            return [record_of(row) for row in session.scalars(query)]

    def record_requested_run(self, record: RunRecord, *, replay_plan: ReplayPlan | None = None) -> bool:
        """Record a run that was just requested (queued) unless it is known already; True when recorded. A replay
        run's ``replay_plan`` (what it sends) is recorded with it."""
        plan = None if replay_plan is None else dataclasses.asdict(replay_plan)
        with self.database.transaction("Run") as session:
            return self.database.insert_ignore(session, RunRow, _columns_of(record) | {"replay_plan": plan})

    # --- a replay run's publication ----------------------------------------------------------------------

    def replay_publication(self, run_id: uuid.UUID) -> ReplayPublication | None:
        """Where the publication of the replay run ``run_id`` stands (None: no such run)."""
        with self.database.connect("Run") as connection:
            row = connection.execute(
                select(RunRow.replay_plan, RunRow.replay_acknowledged).where(RunRow.run_id == str(run_id))
            ).first()
        if row is None:
            return None
        plan = None if row.replay_plan is None else ReplayPlan(**row.replay_plan)
        return ReplayPublication(plan=plan, acknowledged=row.replay_acknowledged or 0)

    def claim_replay_publication(self, run_id: uuid.UUID, claimant: str, lease_seconds: float) -> bool:
        """Claim the publication of the replay run ``run_id`` for ``claimant`` (one conditional statement: one
        claimant at a time): False when Kafka acknowledged all of it already, or another claimant holds it since less
        than ``lease_seconds`` (older: its holder died, the claim is taken over)."""
        free = (
            RunRow.replay_claimed_at.is_(None)
            | (RunRow.replay_claimed_by == claimant)
            | (RunRow.replay_claimed_at < self._catalog_now(lease_seconds))
        )
        with self.database.begin("Run") as connection:
            claimed = connection.execute(
                update(RunRow)
                .where(RunRow.run_id == str(run_id), RunRow.replay_acknowledged < ALL_ACKNOWLEDGED, free)
                .values(replay_claimed_at=self._catalog_now(), replay_claimed_by=claimant)
            )
            return bool(claimed.rowcount)

    def replay_step_acknowledged(self, run_id: uuid.UUID, claimant: str, step: int) -> bool:
        """Record that Kafka acknowledged the replay run's publication up to ``step``, renewing ``claimant``'s claim
        (its lease starts again: it bounds one publication, not all three); the last step ends the claim. A claim no
        longer ``claimant``'s records nothing (its new holder publishes what is left): False, the claimant stops."""
        values: dict[str, Any] = {
            "replay_acknowledged": func.max(RunRow.replay_acknowledged, step)
            if self.database.engine.dialect.name == "sqlite"
            else func.greatest(RunRow.replay_acknowledged, step),
            "replay_claimed_at": self._catalog_now(),
        }
        if step >= ALL_ACKNOWLEDGED:
            values |= {"replay_claimed_at": None, "replay_claimed_by": None}
        with self.database.begin("Run") as connection:
            recorded = connection.execute(
                update(RunRow)
                .where(RunRow.run_id == str(run_id), RunRow.replay_claimed_by == claimant)
                .values(**values)
            )
            return bool(recorded.rowcount)

    def release_replay_publication(self, run_id: uuid.UUID, claimant: str) -> None:
        """End ``claimant``'s claim of the replay run's publication (it failed): the next retry may claim it."""
        with self.database.begin("Run") as connection:
            connection.execute(
                update(RunRow)
                .where(RunRow.run_id == str(run_id), RunRow.replay_claimed_by == claimant)
                .values(replay_claimed_at=None, replay_claimed_by=None)
            )

    def batches_with_outcomes(self, run_id: uuid.UUID) -> set[int]:
        """The batch indexes of ``run_id`` with an outcome in the ledger (delivered or failed: sent already)."""
        with self.database.connect("Run") as connection:
            return set(
                connection.execute(
                    select(BatchOutcomeRow.batch_index).where(BatchOutcomeRow.run_id == str(run_id))
                ).scalars()
            )

    def unfinished_runs(self, limit: int = 1_000) -> list[RunRecord]:
        """Runs not final yet, least recently active first."""
        with self.database.transaction("Run") as session:
            rows = session.scalars(
                select(RunRow).where(RunRow.status.in_(UNFINISHED)).order_by(RunRow.last_event_at).limit(limit)
            )
            return [record_of(row) for row in rows]

    def recent_final_statuses(self, definition: str, limit: int) -> list[RunStatus]:
        """The statuses of a definition's latest finished runs, newest first."""
        with self.database.transaction("Run") as session:
            rows = session.scalars(
                select(RunRow.status)
                .where(RunRow.definition == definition, RunRow.finished_at.is_not(None))
                .order_by(RunRow.finished_at.desc())
                .limit(limit)
            )
            return [RunStatus(status) for status in rows]

    def active_runs(self, definitions: list[str]) -> dict[str, uuid.UUID]:
        """For each of ``definitions`` that has a run not yet finished, one such run: recorded under that name, or
        under an earlier name of the same definition (its id: renamed since the run began). A run of a definition
        deleted since is nobody's (not that of a definition created since under its name); a run recorded with no
        definition (unknown when it began) is found by its name."""
        if not definitions:
            return {}
        with self.database.transaction("Run") as session:
            rows = session.execute(
                select(RunRow.definition, RunRow.run_id).where(
                    RunRow.definition.in_(definitions), RunRow.status.in_(UNFINISHED)
                )
            ).all()
            # The runs going under another name than their definition's, or whose definition is gone: few, so asked
            # for all and kept here (an IN of thousands of names again cost as much as the first statement, at a
            # burst). The name is None for a definition deleted.
            moved_or_gone = session.execute(
                select(CatalogObjectRow.name, RunRow.run_id)
                .outerjoin(CatalogObjectRow, CatalogObjectRow.id == RunRow.definition_id)
                .where(
                    RunRow.status.in_(UNFINISHED),
                    RunRow.definition_id.is_not(None),
                    or_(CatalogObjectRow.id.is_(None), RunRow.definition != CatalogObjectRow.name),
                )
            ).all()
            asked = set(definitions)
            kept = [(name, run_id) for name, run_id in moved_or_gone if name in asked]
            # A run recorded under a name its definition no longer has is that definition's, not the one that took the
            # name since (a definition renamed, or deleted, then another created under its name).
            moved = {run_id for _, run_id in moved_or_gone}
            named = [(definition, run_id) for definition, run_id in rows if run_id not in moved]
            return {definition: uuid.UUID(run_id) for definition, run_id in [*kept, *named]}

    # --- a run's finish, handled once --------------------------------------------------------------------

    def finishes_unhandled(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Of ``run_ids``, the runs whose finish the notifier has not recorded as handled (one query; runs not final
        yet are among them, unknown runs are not)."""
        if not run_ids:
            return set()
        with self.database.connect("Run") as connection:
            rows = connection.execute(
                select(RunRow.run_id).where(RunRow.run_id.in_(_id_texts(run_ids)), RunRow.finish_handled_at.is_(None))
            ).scalars()
            return {uuid.UUID(run_id) for run_id in rows}

    def claim_finishes(
        self, run_ids: Sequence[uuid.UUID], claimant: str, lease_seconds: float
    ) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """Claim the finish of ``run_ids`` for ``claimant`` (one statement, exclusive): those whose finish is not
        handled and not claimed by another claimant in the last ``lease_seconds`` (a claim older than that is
        taken over: its holder died). Returns the runs claimed (``claimant``'s own claims again included), and the
        runs whose finish another claimant holds (theirs to do; read only when some run was not claimed).
        Runs in neither are handled (or unknown)."""
        if not run_ids:
            return set(), set()
        asked = _id_texts(run_ids)
        free = (
            RunRow.finish_claimed_at.is_(None)
            | (RunRow.finish_claimed_by == claimant)
            | (RunRow.finish_claimed_at < self._catalog_now(lease_seconds))
        )
        with self.database.begin("Run") as connection:
            claimed = set(
                connection.execute(
                    update(RunRow)
                    .where(*self._runs_in_key_order(asked, RunRow.finish_handled_at.is_(None), free))
                    .values(finish_claimed_at=self._catalog_now(), finish_claimed_by=claimant)
                    .returning(RunRow.run_id)
                ).scalars()
            )
            others = [run_id for run_id in asked if run_id not in claimed]
            held: list[str] = []
            if others:
                held = list(
                    connection.execute(
                        select(RunRow.run_id).where(RunRow.run_id.in_(others), RunRow.finish_handled_at.is_(None))
                    ).scalars()
                )
            return {uuid.UUID(run_id) for run_id in claimed}, {uuid.UUID(run_id) for run_id in held}

    def _runs_in_key_order(self, run_ids: list[str], *conditions: ColumnElement[bool]) -> list[ColumnElement[bool]]:
        """The conditions of an update of the runs ``run_ids`` meeting ``conditions``, locking them in key order
        when there are several (:func:`in_key_order`)."""
        selected = [RunRow.run_id.in_(run_ids), *conditions]
        return selected if len(run_ids) < 2 else in_key_order(self.database, [RunRow.run_id], selected)

    def renew_finish_claim(self, run_id: uuid.UUID, claimant: str) -> bool:
        """Renew ``claimant``'s claim of the finish of ``run_id`` (its lease starts again), before doing it: False
        when the claim is no longer ``claimant``'s (another replica took it over, or the finish is handled)."""
        with self.database.begin("Run") as connection:
            renewed = connection.execute(
                update(RunRow)
                .where(
                    RunRow.run_id == str(run_id),
                    RunRow.finish_handled_at.is_(None),
                    RunRow.finish_claimed_by == claimant,
                )
                .values(finish_claimed_at=self._catalog_now())
            )
            return bool(renewed.rowcount)

    def finishes_held(self, run_ids: Sequence[uuid.UUID], claimant: str, lease_seconds: float) -> set[uuid.UUID]:
        """Of ``run_ids``, the runs whose finish is not handled and claimed by a claimant other than ``claimant``
        in the last ``lease_seconds`` (a live claim: its notifications are its holder's to send). One query."""
        if not run_ids:
            return set()
        with self.database.connect("Run") as connection:
            rows = connection.execute(
                select(RunRow.run_id).where(
                    RunRow.run_id.in_(_id_texts(run_ids)),
                    RunRow.finish_handled_at.is_(None),
                    RunRow.finish_claimed_by != claimant,
                    RunRow.finish_claimed_at >= self._catalog_now(lease_seconds),
                )
            ).scalars()
            return {uuid.UUID(run_id) for run_id in rows}

    def finishes_pending(self, lease_seconds: float, limit: int) -> tuple[int, list[RunRecord]]:
        """The final runs whose finish is not handled though they finished more than ``lease_seconds`` ago: how
        many, and the oldest ``limit`` of them whose finish no one holds (unclaimed, or its claim older than the
        lease: its holder died)."""
        cutoff = self._catalog_now(lease_seconds)
        # On SQLite, the status as an expression (``status || ''``): else its planner searches ix_runs_status (every
        # final run ever) rather than scanning the partial index of the few unhandled ones.
        status = RunRow.status + "" if self.database.engine.dialect.name == "sqlite" else RunRow.status
        pending = (
            RunRow.finish_handled_at.is_(None),
            status.in_(FINAL),
            func.coalesce(RunRow.finished_at, RunRow.last_event_at) < cutoff,
        )
        with self.database.transaction("Run") as session:
            count = session.scalar(select(func.count()).select_from(RunRow).where(*pending)) or 0
            if not count:
                return 0, []
            rows = session.scalars(
                select(RunRow)
                .where(*pending, RunRow.finish_claimed_at.is_(None) | (RunRow.finish_claimed_at < cutoff))
                .order_by(func.coalesce(RunRow.finished_at, RunRow.last_event_at), RunRow.run_id)
                .limit(limit)
            )
            return count, [record_of(row) for row in rows]

    def mark_finishes_handled(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Record the finish of ``run_ids`` as handled, after their work (one statement; it ends their claim); the
        runs this call recorded (not those recorded before, by an earlier handling of the same finish)."""
        if not run_ids:
            return set()
        with self.database.begin("Run") as connection:
            rows = connection.execute(
                update(RunRow)
                .where(*self._runs_in_key_order(_id_texts(run_ids), RunRow.finish_handled_at.is_(None)))
                .values(finish_handled_at=now(), finish_claimed_at=None)
                .returning(RunRow.run_id)
            ).scalars()
            return {uuid.UUID(run_id) for run_id in rows}

    # --- idempotency keys ----------------------------------------------------------------------------

    def claim_idempotency_key(self, caller: str, definition: str, key: str, run_id: uuid.UUID) -> uuid.UUID:
        """The run of an ``Idempotency-Key``: ``run_id`` when the key is new, else the run it started before.

        One atomic claim of (caller, definition, key). The use case (``shared.application.runs``) claims the
        key twice through it: with the request's fingerprint in place of ``definition``, then with "" for
        the key alone, so that a key reused for a different request is told apart from a retry.
        """
        scope = _key_scope(caller, definition, key)
        with self.database.transaction("Run") as session:
            values = {"scope": scope, "run_id": str(run_id), "created_at": now()}
            if self.database.insert_ignore(session, IdempotencyKeyRow, values):
                return run_id
            existing = session.get(IdempotencyKeyRow, scope)
            assert existing is not None
            return uuid.UUID(existing.run_id)

    def idempotency_key_run(self, caller: str, definition: str, key: str) -> uuid.UUID | None:
        """The run (caller, definition, key) was claimed for, if it was; claims nothing."""
        with self.database.transaction("Run") as session:
            existing = session.get(IdempotencyKeyRow, _key_scope(caller, definition, key))
            return None if existing is None else uuid.UUID(existing.run_id)

    # --- notifications -------------------------------------------------------------------------------

    def unsent_notifications(self, limit: int = 100) -> list[tuple[uuid.UUID, str]]:
        """(run id, kind) of notifications claimed but not sent yet (a failed SMTP or webhook, a crash in
        between), not those given up, nor those whose next attempt is not due yet: first those never tried (nor
        claimed) since, then by their next attempt time, oldest first, so that ``limit`` rows failing again and
        again (each attempt pushes its next one back) never keep a newer one out of the window."""
        with self.database.transaction("Run") as session:
            rows = session.execute(
                select(NotificationRow.run_id, NotificationRow.kind)
                .where(
                    NotificationRow.sent_at.is_(None),
                    NotificationRow.gave_up_at.is_(None),
                    (NotificationRow.next_attempt_at.is_(None)) | (NotificationRow.next_attempt_at <= now()),
                )
                .order_by(
                    NotificationRow.next_attempt_at.asc().nulls_first(), NotificationRow.run_id, NotificationRow.kind
                )
                .limit(limit)
            )
            return [(uuid.UUID(run_id), kind) for run_id, kind in rows]

    def claim_unsent_notifications(
        self,
        keys: Sequence[tuple[uuid.UUID, str]],
        lease_seconds: float,
        claimant: Claimant | None = None,
        earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = None,
    ) -> dict[tuple[uuid.UUID, str], datetime]:
        """Claim these (run id, kind) notifications for one attempt by the caller (a sweep's retry, a finish's send):
        those still unsent, not given up and due on the catalog's clock (a claim older than ``lease_seconds`` is due
        again: its claimant died). One conditional statement, in its own transaction, exclusive
        (:meth:`LeaseClaims.claim`): a notification two callers claim at once is claimed by one of them, and a claim
        that fails claims nothing. At most :data:`MAX_CLAIMS` keys (a ``ValueError`` beyond: a claim is
        never split in parts). The claim is the next attempt's time pushed ``lease_seconds`` ahead; a failed
        attempt's mark (:meth:`mark_notification`) ends it. Returns the ones claimed, each with its claim (the token
        :meth:`renew_notification_claims` and :meth:`release_notification_claims` take).

        With ``claimant`` (a notifier replica's id and its process's start, for its finish's notifications), the
        claims name it, and those still ``claimant``'s own and made before its process started are claimed again at
        once (it was killed between its claim and the send's record and comes back under the same id; a claim made
        since waits for its lease: a live twin's, or this process's own); without, no one's (a sweep's), and a claim
        waits for its lease whoever holds it.

        ``earlier`` (when given) gets what the claim's own statement read of each claimed notification
        (:data:`EarlierSends`): its recipients refused so far (:meth:`refused_recipients`, empty when none) and its
        failed attempts so far (:meth:`notification_attempts`): an email's send and its mark read neither again."""
        pairs = [(str(run_id), kind) for run_id, kind in keys]
        carried: dict[RowKey, tuple[Any, ...]] = {}
        claims = self._claims.claim(pairs, lease_seconds, what="notifications", claimant=claimant, carried=carried)
        if earlier is not None:
            earlier.update(_earlier(carried))
        return _run_keys(claims)

    def renew_notification_claims(
        self, claims: Mapping[tuple[uuid.UUID, str], datetime], lease_seconds: float
    ) -> dict[tuple[uuid.UUID, str], datetime]:
        """Renew these claims (:meth:`claim_unsent_notifications`) for another ``lease_seconds``: those still the
        caller's (the claim unchanged, the notification unsent). Returns them with their new claim; a claim not
        returned is no longer the caller's (lapsed and taken by another sweep, or marked): not to send."""
        return _run_keys(self._claims.renew(_row_keys(claims), lease_seconds))

    def release_notification_claims(self, claims: Mapping[tuple[uuid.UUID, str], datetime]) -> None:
        """End these claims, not attempted (the sweep stopped before them): due again at once, for the next sweep,
        rather than after the lease. Those no longer the caller's are left as they are."""
        self._claims.release(_row_keys(claims))

    def claim_notification(
        self,
        run_id: uuid.UUID,
        kind: str,
        recipients: list[str],
        lease_seconds: float | None = None,
        claimant: Claimant | None = None,
        earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = None,
    ) -> bool:
        """True when this (run, kind) notification has not been sent (nor given up) yet: the caller should send it. With
        ``lease_seconds``, True only when it is also claimed for one attempt by the caller now, in the same transaction,
        as :meth:`claim_unsent_notifications` claims it (in ``claimant``'s name, taking back a claim still
        ``claimant``'s own from before its process started): not while another's claim holds it (a sweep sending it),
        nor while it backs off; then ``earlier`` (when given) gets its recipients refused so far and its failed attempts
        so far, read by the claim's statement (as :meth:`claim_unsent_notifications`)."""
        with self.database.transaction("Run") as session:
            inserted = self.database.insert_ignore(
                session, NotificationRow, {"run_id": str(run_id), "kind": kind, "recipients": recipients}
            )
            if lease_seconds is not None:
                claiming = self._claims.claiming([(str(run_id), kind)], lease_seconds, claimant)
                rows = session.execute(claiming).all()
                if earlier is not None:
                    earlier.update(_earlier(self._claims.carried_by(rows)))
                return bool(rows)
            if inserted:  # new: neither sent nor given up (before session 52, read again)
                return True
            row = session.get(NotificationRow, (str(run_id), kind))
            return row is not None and row.sent_at is None and row.gave_up_at is None

    def notification_attempts(self, run_id: uuid.UUID, kind: str) -> int:
        """How many attempts of this notification failed so far (0 when none or unknown)."""
        with self.database.transaction("Run") as session:
            row = session.get(NotificationRow, (str(run_id), kind))
            return 0 if row is None else row.attempts or 0

    def mark_notification(
        self,
        run_id: uuid.UUID,
        kind: str,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
        give_up: bool = False,
        undelivered: str | None = None,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        max_attempts: int | None = None,
        sent_when_spent: str | None = None,
    ) -> NotificationMark | None:
        """Record a notification as sent (``undelivered``: to whom it was not, an email some recipients refused, kept
        as its last error), or the error of its last failed attempt: tried again at ``retry_at`` (None: at the next
        sweep), or never again with ``give_up``, or (``max_attempts``) once this failure is its ``max_attempts``-th.
        A failure not ``counted`` (one every email would meet: the SMTP server down or refusing the sender) is
        recorded without adding to ``attempts``, the failures about it, and never spends them. With
        ``sent_when_spent`` (an email some recipients took while others refused it for now), the failure that spends
        its attempts records it sent instead, that text its last error, its attempts as they were.
        ``refused``: the recipients refused so far while others took the email (kept; those refused for now are
        mailed again alone: :meth:`refused_recipients`).

        One ``UPDATE ... RETURNING`` of the locked row, which counts the attempt (``attempts + 1`` in the statement)
        and decides the give-up from the count it holds, not from one read before the send: of two replicas whose
        attempts overlapped (a lease over mid-send, the notification claimed again by another), the second failure's
        mark sees the first's, and the notification is never given up above ``max_attempts``, nor left pending at it.
        Returns what it wrote (:class:`NotificationMark`), or None when there was nothing to mark: no such row, or one
        another's mark ended meanwhile (a failure of a notification sent or given up; a send of one sent)."""
        return self.mark_notifications(
            [(run_id, kind)],
            error=error,
            retry_at=retry_at,
            give_up=give_up,
            undelivered=undelivered,
            counted=counted,
            refused=refused,
            max_attempts=max_attempts,
            sent_when_spent=sent_when_spent,
        ).get((run_id, kind))

    def mark_notifications(
        self,
        keys: Sequence[tuple[uuid.UUID, str]],
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
        give_up: bool = False,
        undelivered: str | None = None,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        max_attempts: int | None = None,
        sent_when_spent: str | None = None,
    ) -> dict[tuple[uuid.UUID, str], NotificationMark]:
        """Mark these (run id, kind) notifications' attempt as :meth:`mark_notification` marks one (a digest's: one
        attempt for its runs), in one ``UPDATE ... RETURNING`` (one per :data:`MAX_CLAIMS` keys): each row's attempt
        counted and its give-up decided from the count it holds, as if marked alone. Returns what it wrote to each;
        one not in it had nothing to mark (no such row, or one another's mark ended meanwhile). Before (session 52),
        one statement a run of the digest."""
        values: dict[Any, Any] = {}
        open_: list[ColumnElement[bool]]
        if refused is not None:
            values[NotificationRow.refused_recipients] = {
                address: [code, text] for address, (code, text) in refused.items()
            }
        if error is None:
            values |= {NotificationRow.sent_at: now(), NotificationRow.last_error: undelivered}
            open_ = [NotificationRow.sent_at.is_(None)]
        else:
            values |= _failure_values(error, retry_at, give_up, counted, max_attempts, sent_when_spent)
            open_ = list(self._claims.still_open)
        pairs = sorted({(str(run_id), kind) for run_id, kind in keys})
        written: dict[tuple[uuid.UUID, str], NotificationMark] = {}
        for start in range(0, len(pairs), MAX_CLAIMS):
            part = pairs[start : start + MAX_CLAIMS]
            key = (
                [NotificationRow.run_id == part[0][0], NotificationRow.kind == part[0][1]]
                if len(part) == 1
                else [tuple_(NotificationRow.run_id, NotificationRow.kind).in_(part)]
            )
            conditions = [*key, *open_]
            if len(part) > 1:
                conditions = in_key_order(self.database, [NotificationRow.run_id, NotificationRow.kind], conditions)
            returned = (
                update(NotificationRow)
                .where(*conditions)
                .values(values)
                .returning(
                    NotificationRow.run_id,
                    NotificationRow.kind,
                    NotificationRow.attempts,
                    NotificationRow.sent_at,
                    NotificationRow.gave_up_at,
                )
                .execution_options(synchronize_session=False)
            )
            with self.database.begin("Run") as connection:
                rows = connection.execute(returned).all()
            for run_id, kind, attempts, sent_at, gave_up_at in rows:
                mark = NotificationMark(attempts or 0, sent=sent_at is not None, given_up=gave_up_at is not None)
                written[(uuid.UUID(run_id), kind)] = mark
        return written

    def refused_recipients(self, run_id: uuid.UUID, kind: str) -> RefusedRecipients:
        """The recipients the SMTP server refused while it took this email for the others, so far (empty when none,
        or none kept): each address with the server's code and text."""
        with self.database.transaction("Run") as session:
            row = session.get(NotificationRow, (str(run_id), kind))
            return refusals(row.refused_recipients if row is not None else None)

    def notifications_of(self, run_id: uuid.UUID) -> list[RunNotification]:
        """The run's notifications (emails and webhooks) and where each stands, by kind (one query)."""
        with self.database.transaction("Run") as session:
            rows = session.scalars(
                select(NotificationRow).where(NotificationRow.run_id == str(run_id)).order_by(NotificationRow.kind)
            )
            return [
                RunNotification(
                    kind=row.kind,
                    recipients=tuple(row.recipients or ()),
                    status=notification_status(row.sent_at, row.gave_up_at),
                    attempts=row.attempts or 0,
                    last_error=row.last_error,
                    sent_at=aware(row.sent_at),
                    gave_up_at=aware(row.gave_up_at),
                    # A claim's lease is not a next attempt: shown only for one pending after a failed attempt.
                    next_attempt_at=aware(row.next_attempt_at) if pending_after_failure(row) else None,
                )
                for row in rows
            ]

    def notifications(self, run_id: uuid.UUID) -> dict[str, datetime | None]:
        with self.database.transaction("Run") as session:
            rows = session.scalars(select(NotificationRow).where(NotificationRow.run_id == str(run_id)))
            return {row.kind: aware(row.sent_at) for row in rows}


def pending_after_failure(row: NotificationRow) -> bool:
    # Failed once at least: a failure about it (``attempts``), or one every email would meet (its error kept).
    failed = (row.attempts or 0) > 0 or row.last_error is not None
    return row.sent_at is None and row.gave_up_at is None and failed


# --- mapping between run records and rows ------------------------------------------------------------
#
# The record's fields and the row's columns have the same names; only their Python types differ, so
# one converter per type maps every field both ways (no field-by-field copy to keep in step).

_RECORD_FIELDS = [field.name for field in dataclasses.fields(RunRecord)]
_FROM_COLUMN: dict[str, Any] = {
    "run_id": uuid.UUID,
    "replay_of": lambda value: uuid.UUID(value) if value else None,
    "definition_id": lambda value: uuid.UUID(value) if value else None,
    "terminal_status": lambda value: RunStatus(value) if value else None,
    "error_samples": lambda value: tuple(value or ()),
    "requested_at": aware,
    "scheduled_for": aware,
    "started_at": aware,
    "last_event_at": aware,
    "finished_at": aware,
}
_TO_COLUMN: dict[str, Any] = {
    "run_id": str,
    "replay_of": lambda value: str(value) if value else None,
    "definition_id": lambda value: str(value) if value else None,
    "terminal_status": lambda value: value.value if value else None,
    "error_samples": list,
}


def record_of(row: RunRow) -> RunRecord:
    """The run record a row holds."""
    values = {name: getattr(row, name) for name in _RECORD_FIELDS}
    return RunRecord(**{name: _FROM_COLUMN.get(name, _same)(value) for name, value in values.items()})


def _columns_of(record: RunRecord) -> dict[str, Any]:
    values = {name: _TO_COLUMN.get(name, _same)(getattr(record, name)) for name in _RECORD_FIELDS}
    return values | {"status": record.status.value}


def write_record(record: RunRecord, row: RunRow) -> None:
    """Write a run record into its row (the derived status too, so lists can filter on it)."""
    for column, value in _columns_of(record).items():
        if column != "run_id":
            setattr(row, column, value)


def _same(value: Any) -> Any:
    return value


def _failure_values(
    error: str,
    retry_at: datetime | None,
    give_up: bool,
    counted: bool,
    max_attempts: int | None,
    sent_when_spent: str | None,
) -> dict[Any, Any]:
    """The columns a failed attempt's mark writes (:meth:`SqlRunsStore.mark_notification`), computed by the statement
    from the row it updates (its attempts before, in SQL: the old values): the attempt counted, and the notification
    given up (or, ``sent_when_spent``, recorded sent) when this failure spends its ``max_attempts``."""
    before = func.coalesce(NotificationRow.attempts, 0)
    counting = before + 1 if counted else before
    at = now()
    retry = as_utc(retry_at)
    if give_up:
        return {
            NotificationRow.last_error: error,
            NotificationRow.attempts: counting,
            NotificationRow.next_attempt_at: None,
            NotificationRow.gave_up_at: at,
        }
    if max_attempts is None or not counted:  # never spent by this failure
        return {
            NotificationRow.last_error: error,
            NotificationRow.attempts: counting,
            NotificationRow.next_attempt_at: retry,
        }
    spent = before + 1 >= max_attempts
    when_spent = {
        NotificationRow.next_attempt_at: case((spent, None), else_=literal(retry, NotificationRow.next_attempt_at.type))
    }
    if sent_when_spent is None:
        return when_spent | {
            NotificationRow.last_error: error,
            NotificationRow.attempts: counting,
            NotificationRow.gave_up_at: case((spent, literal(at, NotificationRow.gave_up_at.type)), else_=None),
        }
    return when_spent | {
        NotificationRow.last_error: case((spent, sent_when_spent), else_=error),
        NotificationRow.attempts: case((spent, before), else_=counting),
        NotificationRow.sent_at: case((spent, literal(at, NotificationRow.sent_at.type)), else_=None),
    }


def _known_at_insert(starts: StartClaims | None, inserted: Sequence[tuple[uuid.UUID, str]]) -> None:
    """What the fold's claims it inserted (committed) know of their notifications, into ``starts.earlier`` (when
    given): no recipient refused yet, no failed attempt (:attr:`StartClaims.earlier`)."""
    if starts is not None and starts.earlier is not None:
        starts.earlier.update({key: ({}, 0) for key in inserted})


def _earlier(carried: Mapping[RowKey, tuple[Any, ...]]) -> dict[tuple[uuid.UUID, str], EarlierSends]:
    """What claims read of each notification (its refused recipients as kept, its failed attempts), by (run id,
    kind)."""
    return {
        (uuid.UUID(run_id), kind): (refusals(kept), attempts or 0)
        for (run_id, kind), (kept, attempts) in carried.items()
    }


def _row_keys(claims: Mapping[tuple[uuid.UUID, str], datetime]) -> dict[RowKey, datetime]:
    """Notification claims keyed as the ledger keys them."""
    return {(str(run_id), kind): token for (run_id, kind), token in claims.items()}


def _run_keys(claims: Mapping[RowKey, datetime]) -> dict[tuple[uuid.UUID, str], datetime]:
    """The ledger's claims keyed by (run id, kind)."""
    return {(uuid.UUID(run_id), kind): token for (run_id, kind), token in claims.items()}


#: The run ids one query of :meth:`SqlRunsStore.business_units_of` asks for.
_IDS_PER_QUERY = 900


def _again_if_run_created_meanwhile(fold_once: Callable[[], R]) -> R:
    """``fold_once`` (a fold's transaction) done again while a run it creates was created meanwhile by another fold
    (:func:`_run_created_meanwhile`), or a member's retry row it creates was written meanwhile
    (:class:`MemberCreatedMeanwhile`), at most :data:`FOLD_ATTEMPTS` times: the fold found no row of that run or
    member (nothing to lock) and the other's insert came first. Done again, the fold finds the row and locks it; what
    the other counted (its outcomes in the ledger, its claims of the run's notifications, its members' refusals) is
    neither counted twice nor overwritten."""
    for attempt in range(1, FOLD_ATTEMPTS):
        try:
            return fold_once()
        except MemberCreatedMeanwhile:
            log.info("a member's retry row the fold creates was written meanwhile; folded again", attempt=attempt)
        except IntegrityError as exc:
            if not _run_created_meanwhile(exc):
                raise
            log.info("a run the fold creates was created meanwhile by another fold; folded again", attempt=attempt)
    return fold_once()


def _run_created_meanwhile(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a unique violation of the runs' key (SQLSTATE 23505): a run this fold creates, created by
    another fold since this one looked for it (PostgreSQL; SQLite's one writer at a time never sees it)."""
    diag = getattr(exc.orig, "diag", None)
    return getattr(exc.orig, "sqlstate", None) == "23505" and getattr(diag, "table_name", None) == RunRow.__tablename__


def _id_texts(run_ids: Sequence[uuid.UUID]) -> list[str]:
    """Run ids as the ``runs`` table keys them, once each, sorted (rows locked in one order by every writer)."""
    return sorted({str(run_id) for run_id in run_ids})


def _key_scope(caller: str, definition: str, key: str) -> str:
    """The stored scope of an idempotency key: SHA-256 of (caller, definition, key)."""
    return hashlib.sha256(f"{caller}\0{definition}\0{key}".encode()).hexdigest()
