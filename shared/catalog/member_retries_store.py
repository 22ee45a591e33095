"""Refused members retried by the next runs: written from batch outcomes (an outcome follower in the
notifier's fold), taken by the extractor at a run's start, shown by ``exportctl dead-letters``."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import cast

from pydantic import ValidationError
from sqlalchemy import (
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.definition_ids import definition_id_of_run, outcome_definition_ids
from shared.catalog.member_tables import MemberRetryRow, RunRetryClaimRow, RunRetryRow
from shared.catalog.tables import CatalogObjectRow
from shared.domain.member_deliveries import MAX_KEY_LENGTH
from shared.domain.member_retries import (
    MemberRetry,
    RefusalKind,
    RetryRejected,
    RetryState,
    after_delivery,
    after_refusal,
)
from shared.events import BatchOutcome

#: Keys per ``IN (...)`` list: well under every driver's bound on parameters.
CHUNK = 500
_COLUMNS = [
    "definition_id",
    "member_key",
    "status",
    "reason",
    "kind",
    "failed_runs",
    "state",
    "last_run_id",
    "updated_at",
]
#: Open members of a definition read at once at most (beyond, or beyond the fold's keys: by the fold's keys).
OPEN_IN_MEMORY = 50_000
#: Days a resolved member's row and a run's claim of retries are kept (the notifier's sweep prunes them).
KEEP_DAYS = 7.0
#: Rows one delete of the prune takes at most (each its own transaction).
PRUNE_BATCH = 5_000
#: The states a delivery resolves.
OPEN = (RetryState.PENDING.value, RetryState.GIVEN_UP.value)


def _chunks(keys: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _retry_of(row: MemberRetryRow) -> MemberRetry:
    return MemberRetry(
        row.member_key,
        row.status,
        row.reason,
        RefusalKind(row.kind),
        row.failed_runs,
        RetryState(row.state),
        row.last_run_id,
    )


class MemberCreatedMeanwhile(Exception):
    """A member's retry row this fold creates (it read none) was written by another transaction since it read, and
    committed (PostgreSQL: its upsert met that row): the fold's transaction is done again, reading the row, so that the
    other's refusal is counted too, not overwritten. A guard: folds refusing members of a definition hold its lock
    exclusively from before they read (:func:`_definition_ids_locked`), so no other fold writes one meanwhile."""


#: The advisory locks' key space (the first of the two keys) for a definition's members: held by a fold that
#: refuses them exclusively, by one that names them shared (:func:`_definition_ids_locked`).
LOCK_SPACE = 0x4D52  # "MR"

#: A poll's outcomes' definitions (by run, as :func:`outcome_definition_ids` finds them) and the fold's lock of each
#: (key order, one statement): exclusive where the fold refuses a member, else shared.
_IDS_LOCKED = text(
    """
WITH asked AS (
    SELECT * FROM unnest(CAST(:run_ids AS text[]), CAST(:names AS text[]), CAST(:refuses AS boolean[]))
        AS a(run_id, name, refuses)
), found AS MATERIALIZED (
    SELECT a.run_id, COALESCE(NULLIF(r.definition_id, ''), c.id) AS definition_id, a.refuses
    FROM asked a
    LEFT JOIN runs r ON r.run_id = a.run_id
    LEFT JOIN catalog_objects c ON c.kind = 'ExportDefinition' AND c.name = a.name
), keys AS (
    SELECT hashtext(definition_id) AS key, bool_or(refuses) AS exclusive
    FROM found WHERE definition_id IS NOT NULL GROUP BY hashtext(definition_id)
), taken AS MATERIALIZED (
    SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(:space, key)::text
        ELSE pg_advisory_xact_lock_shared(:space, key)::text END AS locked
    FROM keys ORDER BY key
)
SELECT run_id, definition_id FROM found WHERE definition_id IS NOT NULL AND (SELECT count(*) FROM taken) >= 0
"""
)


def _refuses(outcome: BatchOutcome) -> bool:
    """Whether the fold writes a refusal of one of ``outcome``'s members (a key short enough to be kept)."""
    return any(len(member.key) <= MAX_KEY_LENGTH for member in outcome.refused)


def _definition_ids_locked(session: Session, outcomes: Sequence[BatchOutcome]) -> dict[str, str]:
    """:func:`outcome_definition_ids` on PostgreSQL, in the same statement as the fold's lock of each definition's
    members until it commits: exclusive where it refuses one (it may open a member: create its row, or make a
    delivered one pending again), shared where it only delivers (it resolves only members it reads open). A fold's
    delivery of a member another fold's uncommitted refusal opened waits for that fold's commit, then reads the
    member open (the next statement's snapshot) and resolves it, not as it was before; two folds refusing the same
    new member create its row one after the other. Locks in key order (one order for every fold: no deadlock)."""
    refuses: dict[str, bool] = {}
    names: dict[str, str] = {}
    for outcome in outcomes:
        run_id = str(outcome.run_id)
        refuses[run_id] = refuses.get(run_id, False) or _refuses(outcome)
        names.setdefault(run_id, outcome.definition)
    run_ids = sorted(refuses)
    parameters = {
        "space": LOCK_SPACE,
        "run_ids": run_ids,
        "names": [names[run_id] for run_id in run_ids],
        "refuses": [refuses[run_id] for run_id in run_ids],
    }
    return {str(run_id): str(definition_id) for run_id, definition_id in session.execute(_IDS_LOCKED, parameters)}


class SqlMemberRetries:
    """The ``member_retries`` table (per definition and member key) and each run's share of it (``run_retries``)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    # --- the notifier's fold (OutcomeFollower) ----------------------------------------------------------

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """Refused members become (or stay) pending, or are given up; pending members delivered are resolved."""
        # Change-mode refusals are counted in the change snapshot (retry_rejected applies there), not here.
        named = [outcome for outcome in outcomes if outcome.member_keys is not None and outcome.change is None]
        if not named:
            return
        if session.connection().dialect.name == "postgresql":
            ids = _definition_ids_locked(session, named)
        else:  # one writer at a time: a fold reads what every other committed, and none is under way
            ids = outcome_definition_ids(session, named)
        by_definition: dict[str, list[BatchOutcome]] = defaultdict(list)
        for outcome in named:
            if (definition_id := ids.get(str(outcome.run_id))) is not None:  # None: the definition is gone
                by_definition[definition_id].append(outcome)
        # Definitions in key order too (each one's rows are written in key order): two folds of runs of the same two
        # definitions refusing the same members lock their rows in one order, never each a row the other waits for.
        for definition, group in sorted(by_definition.items(), key=lambda item: item[0]):
            self._follow_definition(session, definition, group)

    def _follow_definition(self, session: Session, definition: str, outcomes: list[BatchOutcome]) -> None:
        # A key longer than a lookup takes cannot be retried by key (nor indexed everywhere): left to the log.
        refused = [
            (run_id, member)
            for o in outcomes
            if o.refused
            for run_id in [str(o.run_id)]
            for member in o.refused
            if len(member.key) <= MAX_KEY_LENGTH
        ]
        # Open members: pending (a next run sends them again) or given up (a full run may still deliver them).
        # Matched against the fold's own keys at the cost of the smaller of the two: the open set is read (one
        # query) when it holds no more keys than the fold names (and at most OPEN_IN_MEMORY), else only the
        # fold's keys are looked up, in chunks. Never more rows read than the fold has keys.
        limit = min(sum(len(outcome.member_keys or []) for outcome in outcomes), OPEN_IN_MEMORY)
        open_keys = set(
            session.scalars(
                select(MemberRetryRow.member_key)
                .where(MemberRetryRow.definition_id == definition, MemberRetryRow.state.in_(OPEN))
                .limit(limit + 1)
            )
        )
        if not refused and not open_keys:
            return  # the common case: nothing refused, nothing waiting for a delivery (one indexed read)
        if len(open_keys) > limit:
            keys = sorted({key for outcome in outcomes for key in outcome.member_keys or []})
            open_keys = self._open_among(session, definition, keys)
        delivered: dict[str, str] = {}
        for outcome in outcomes:
            refused_keys = {member.key for member in outcome.refused}
            for key in open_keys.intersection(outcome.member_keys or []):
                if key not in refused_keys:
                    delivered[key] = str(outcome.run_id)
        current = self._current(session, definition, sorted({m.key for _, m in refused} | delivered.keys()))
        changed: dict[str, MemberRetry] = {}
        for key, run_id in delivered.items():
            if key in current:
                changed[key] = after_delivery(current[key], run_id)
        policy = self._policy(session, definition) if refused else RetryRejected()
        for run_id, member in refused:
            changed[member.key] = after_refusal(
                changed.get(member.key) or current.get(member.key),
                key=member.key,
                status=member.status,
                reason=member.reason,
                run_id=run_id,
                policy=policy,
            )
        self._write(session, definition, changed, current.keys())

    @staticmethod
    def _open_among(session: Session, definition: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are open (read by key, in chunks)."""
        found: set[str] = set()
        for chunk in _chunks(keys):
            found.update(
                session.scalars(
                    select(MemberRetryRow.member_key).where(
                        MemberRetryRow.definition_id == definition,
                        MemberRetryRow.member_key.in_(chunk),
                        MemberRetryRow.state.in_(OPEN),
                    )
                )
            )
        return found

    @staticmethod
    def _current(session: Session, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]:
        current: dict[str, MemberRetry] = {}
        for chunk in _chunks(keys):
            # Locked (in key order) until the fold commits: another fold's change of these rows waits for this
            # one, and reads them as this one leaves them (never both counting from the same state).
            for row in session.scalars(
                select(MemberRetryRow)
                .where(MemberRetryRow.definition_id == definition, MemberRetryRow.member_key.in_(chunk))
                .order_by(MemberRetryRow.member_key)
                .with_for_update()
            ):
                current[row.member_key] = _retry_of(row)
        return current

    @staticmethod
    def _write(session: Session, definition: str, changed: dict[str, MemberRetry], read: Iterable[str]) -> None:
        """Every changed row in one upsert (INSERT ... ON CONFLICT DO UPDATE), in key order: concurrent folds lock
        rows in the same order (no deadlock on PostgreSQL). A row the fold had not ``read`` (and locked) that another
        transaction wrote meanwhile raises :class:`MemberCreatedMeanwhile` on PostgreSQL (a guard: another fold
        refusing the same new member waits for the definition's lock): the fold is done again, on the row as the
        other left it. (SQLite: one writer at a time, the fold's reads already see it.)"""
        if not changed:
            return
        at = now()
        rows = [
            {
                "definition_id": definition,
                "member_key": key,
                "status": state.status,
                "reason": state.reason,
                "kind": state.kind.value,
                "failed_runs": state.failed_runs,
                "state": state.state.value,
                "last_run_id": state.last_run,
                "updated_at": at,
            }
            for key, state in sorted(changed.items())
        ]
        table = cast(Table, MemberRetryRow.__table__)
        dialect = session.connection().dialect.name
        statement = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(table)
        upsert = statement.on_conflict_do_update(
            index_elements=[table.c.definition_id, table.c.member_key],
            set_={name: statement.excluded[name] for name in _COLUMNS if name not in ("definition_id", "member_key")},
        )
        if dialect != "postgresql":
            session.execute(upsert, rows)
            return
        # xmax 0: the row was inserted, not updated (a conflict), by this statement.
        written = session.execute(upsert.returning(table.c.member_key, literal_column("xmax = 0")), rows)
        updated = {key for key, inserted in written if not inserted}
        if created := sorted(updated.difference(read)):
            raise MemberCreatedMeanwhile(f"{len(created)} members' retry rows written meanwhile, first {created[0]!r}")

    @staticmethod
    def _policy(session: Session, definition: str) -> RetryRejected:
        """The definition's ``retry_rejected`` as saved (the default when it is gone or holds none)."""
        spec = session.scalar(select(CatalogObjectRow.spec).where(CatalogObjectRow.id == definition))
        try:
            return RetryRejected.model_validate((spec or {}).get("retry_rejected") or {})
        except ValidationError:  # saved by another release, say: the defaults, never a fold that cannot go on
            return RetryRejected()

    # --- the extractor ------------------------------------------------------------------------------------

    def claim_retries(self, run_id: uuid.UUID, definition: str) -> int:
        """Take the definition's pending retries for this run, at its first start; how many (see
        :func:`claim_retries_in`, which the extraction store's ``claim_run`` calls in its own transaction)."""
        with self.database.transaction() as session:
            return claim_retries_in(session, run_id, definition)

    def claimed(self, run_id: uuid.UUID) -> int:
        """How many retries the run took at its start (0 when it took none, or never claimed)."""
        with self.database.transaction() as session:
            found = session.get(RunRetryClaimRow, str(run_id))
            return found.keys if found is not None else 0

    def claimed_keys(self, run_id: uuid.UUID, chunk: int = CHUNK) -> Iterator[list[str]]:
        """The keys the run took, in key order, ``chunk`` at a time (one short transaction each)."""
        after: str | None = None
        while True:
            with self.database.transaction() as session:
                statement = select(RunRetryRow.member_key).where(RunRetryRow.run_id == str(run_id))
                if after is not None:
                    statement = statement.where(RunRetryRow.member_key > after)
                keys = list(session.scalars(statement.order_by(RunRetryRow.member_key).limit(chunk)))
            if not keys:
                return
            yield keys
            after = keys[-1]

    def resolve_gone(self, run_id: uuid.UUID, keys: Sequence[str]) -> None:
        """Pending members the query of the run's definition no longer returns: nothing to send again."""
        with self.database.transaction() as session:
            claim = session.get(RunRetryClaimRow, str(run_id))
            if claim is None:
                return
            definition = claim.definition_id
            for chunk in _chunks(keys):
                session.execute(
                    update(MemberRetryRow)
                    .where(
                        MemberRetryRow.definition_id == definition,
                        MemberRetryRow.member_key.in_(chunk),
                        MemberRetryRow.state == RetryState.PENDING.value,
                    )
                    .values(state=RetryState.GONE.value, last_run_id=str(run_id), updated_at=now())
                )

    # --- readers --------------------------------------------------------------------------------------------

    def states(self, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]:
        """The retry state of each of ``keys`` the definition (by its id) has one for."""
        found: dict[str, MemberRetry] = {}
        with self.database.transaction() as session:
            for chunk in _chunks(sorted(set(keys))):
                for row in session.scalars(
                    select(MemberRetryRow).where(
                        MemberRetryRow.definition_id == definition, MemberRetryRow.member_key.in_(chunk)
                    )
                ):
                    found[row.member_key] = _retry_of(row)
        return found

    # --- retention (the notifier's sweep) --------------------------------------------------------------------

    def prune(self, keep_days: float = KEEP_DAYS, *, batch: int = PRUNE_BATCH) -> int:
        """Drop what no run needs any more: resolved members (delivered or gone: pending and given-up ones stay,
        they are the dead letters) and runs' claims with their keys, older than ``keep_days``; every member of a
        definition deleted since (its state is keyed by its id: a namesake re-created never reads it). In
        deletes of ``batch`` rows, each its own short transaction (never one long lock); how many rows went."""
        cutoff = now() - timedelta(days=keep_days)
        gone = 0
        resolved = (RetryState.DELIVERED.value, RetryState.GONE.value)
        key = tuple_(MemberRetryRow.definition_id, MemberRetryRow.member_key)
        # Resolved long enough ago, or of a definition deleted since (orphans: no run reads them any more).
        deleted = ~exists().where(CatalogObjectRow.id == MemberRetryRow.definition_id)
        prunable = or_(and_(MemberRetryRow.state.in_(resolved), MemberRetryRow.updated_at < cutoff), deleted)
        while True:
            with self.database.transaction() as session:
                some = select(MemberRetryRow.definition_id, MemberRetryRow.member_key).where(prunable).limit(batch)
                went = _rowcount(session.execute(delete(MemberRetryRow).where(key.in_(some))))
            gone += went
            if went < batch:
                break
        while True:
            with self.database.transaction() as session:
                runs = list(
                    session.scalars(
                        select(RunRetryClaimRow.run_id).where(RunRetryClaimRow.claimed_at < cutoff).limit(CHUNK)
                    )
                )
                if not runs:
                    break
                pk = tuple_(RunRetryRow.run_id, RunRetryRow.member_key)
                keys = select(RunRetryRow.run_id, RunRetryRow.member_key).where(RunRetryRow.run_id.in_(runs))
                went = _rowcount(session.execute(delete(RunRetryRow).where(pk.in_(keys.limit(batch)))))
                if went < batch:  # the last of these runs' keys: their claims go too
                    went += _rowcount(
                        session.execute(delete(RunRetryClaimRow).where(RunRetryClaimRow.run_id.in_(runs)))
                    )
            gone += went
        return gone


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def claim_retries_in(session: Session, run_id: uuid.UUID, definition: str) -> int:
    """Take the definition's pending retries for this run, at its first start; how many. Recorded even when
    none (a resume, and the run's end, find the same share: never a second claim). The keys are copied in the
    database (INSERT ... SELECT): none is held in memory, however many are pending; no cap (a run after a long
    outage sends every pending member, read and published in chunks). A run never takes the members it
    refused itself. In ``session``'s transaction (the run's claim takes them with its checkpoint)."""
    # Core statements on the session's connection (no ORM objects): a burst of small runs claims one a run.
    connection = session.connection()
    claimed = connection.scalar(select(RunRetryClaimRow.keys).where(RunRetryClaimRow.run_id == str(run_id)))
    if claimed is not None:
        return int(claimed)
    definition_id = definition_id_of_run(session, str(run_id), definition) or ""  # "": gone, takes none
    pending = select(literal(str(run_id)), MemberRetryRow.member_key).where(
        MemberRetryRow.definition_id == definition_id,
        MemberRetryRow.state == RetryState.PENDING.value,
        MemberRetryRow.last_run_id != str(run_id),
    )
    connection.execute(insert(RunRetryRow).from_select(["run_id", "member_key"], pending))
    count = connection.scalar(select(func.count()).where(RunRetryRow.run_id == str(run_id))) or 0
    claim = {"run_id": str(run_id), "definition_id": definition_id, "keys": count, "claimed_at": now()}
    connection.execute(insert(RunRetryClaimRow).values(**claim))
    return int(count)
