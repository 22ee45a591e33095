"""The change-mode snapshot store: each definition's members as last delivered, and what a run staged.

The extractor loads a snapshot into a :class:`~shared.domain.change_index.ChangeIndex` at a run's start,
stages the members it sends (their new fingerprint and values, pending, with the batch that carries them)
before its checkpoint moves, and reads the last values of the removed ones. The
:class:`ChangeSnapshotFollower` moves the snapshot when a batch's outcome is folded: the staged values of
its delivered members become the delivered ones (a delivered removal leaves a tombstone the next run
forgets); its refused members keep their old values, so they are a change again next run, until the
definition's ``retry_rejected`` gives them up (an invalid refusal such as 422 at once, by default): their staged
values are then taken as delivered, and they are sent again only once their values change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import and_, case, delete, func, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.catalog.change_tables import ChangeMemberRow, ChangeRunRow, ChangeSnapshotRow
from shared.catalog.database import CatalogDatabase
from shared.catalog.saved_retry_policy import saved_retry_policy
from shared.catalog.tables import CatalogObjectRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.change_index import ChangeIndex, MemberState
from shared.domain.change_staging import InFlightStaging, SnapshotRun, StagedBatch, StagedMember, Staging
from shared.domain.member_hashes import key_hash
from shared.domain.member_retries import MemberRetry, RetryState, after_refusal, classify
from shared.errors import NotFound
from shared.events import BatchOutcome, ChangeKind

#: Keys a statement names at most (SQLite allows 32,766 bound values; PostgreSQL more).
_CHUNK = 5_000
#: Rows a fetch reads while loading a snapshot (each becomes numpy arrays before the next is read).
_LOAD_ROWS = 20_000
#: What a staging writes on a member's row (and, for a kind not sent, its delivered fingerprint and values).
_STAGED = ("member_key", "run_serial", "batch_index", "kind", "awaiting", "staged_fingerprint", "staged_values")
_IN_RUN = {
    ChangeKind.ADDED.value: MemberState.ADDED_IN_RUN,
    ChangeKind.CHANGED.value: MemberState.CHANGED_IN_RUN,
    ChangeKind.REMOVED.value: MemberState.REMOVED_IN_RUN,
}


def _joined(blocks: list[Any], dtype: Any) -> Any:
    joined = np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)
    blocks.clear()
    return joined


def _chunks(values: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield [int(v) for v in values[start : start + _CHUNK]]


class SqlChangeSnapshots:
    """Change-mode snapshots in the catalog (SQLite or PostgreSQL)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def begin(self, definition: str, run_id: str) -> SnapshotRun:
        """The run's serial in its definition's snapshot (the same for a resumed run); forgets the members whose
        removal an earlier run delivered. The snapshot is the one of the definition's id; :class:`NotFound` when
        there is no such definition (deleted since)."""
        with self.database.transaction() as session:
            definition_id = session.scalar(
                select(CatalogObjectRow.id).where(
                    CatalogObjectRow.kind == ExportDefinition.__name__, CatalogObjectRow.name == definition
                )
            )
            if definition_id is None:
                raise NotFound(ExportDefinition.__name__, definition)
            snapshot = session.scalars(
                select(ChangeSnapshotRow).where(ChangeSnapshotRow.definition_id == definition_id).with_for_update()
            ).first()
            if snapshot is None:
                snapshot = ChangeSnapshotRow(definition_id=definition_id, last_serial=0)
                session.add(snapshot)
                session.flush()
            known = session.get(ChangeRunRow, run_id)
            if known is not None:
                return SnapshotRun(known.snapshot_id, known.serial)
            snapshot.last_serial += 1
            session.add(ChangeRunRow(run_id=run_id, snapshot_id=snapshot.id, serial=snapshot.last_serial))
            member = ChangeMemberRow
            session.execute(
                delete(member).where(
                    member.snapshot_id == snapshot.id,
                    member.kind == ChangeKind.REMOVED.value,
                    member.fingerprint.is_(None),
                    member.awaiting.is_(False),
                )
            )
            return SnapshotRun(snapshot.id, snapshot.last_serial)

    def load(self, run: SnapshotRun) -> ChangeIndex:
        """The snapshot as ``run`` sees it, in memory (streamed: a few MB of rows at a time)."""
        member = ChangeMemberRow
        in_run = case(
            *((member.kind == kind, int(state)) for kind, state in _IN_RUN.items()),
            else_=int(MemberState.DELIVERED),
        )
        state = case(
            (member.run_serial == run.serial, in_run),
            (member.fingerprint.is_(None), int(MemberState.UNDELIVERED)),
            else_=int(MemberState.DELIVERED),
        )
        # In table order, not key order: following the primary key's index would read the rows at random (the
        # index is sorted in memory: ~0.1 s for 1M members).
        statement = select(member.key_hash, func.coalesce(member.fingerprint, 0), state).where(
            member.snapshot_id == run.snapshot_id
        )
        keys, fingerprints, states = [], [], []
        with self.database.connect("ChangeSnapshot") as connection:
            result = connection.execution_options(stream_results=True, yield_per=_LOAD_ROWS).execute(statement)
            for rows in result.partitions():
                # Flattened through itertools: numpy probing each Row as a mapping costs 20x more.
                flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=3 * len(rows))
                block = flat.reshape(-1, 3)
                keys.append(block[:, 0].copy())
                fingerprints.append(block[:, 1].copy())
                states.append(block[:, 2].astype(np.int8))
        # One array at a time, each one's blocks dropped once joined: the peak stays near twice the index's size.
        return ChangeIndex.build(_joined(keys, np.int64), _joined(fingerprints, np.int64), _joined(states, np.int8))

    def stage(self, run: SnapshotRun, entries: Sequence[Staging]) -> None:
        """Stage members in one transaction: each entry's added or changed members sent in its batch (their new
        values pending until the outcome); a batch of None (the kind is not sent): the snapshot takes them now."""
        table = ChangeMemberRow.__table__
        with self.database.transaction() as session:
            for entry in entries:
                if not entry.members:
                    continue
                sent = entry.batch_index is not None
                rows = [
                    {
                        "snapshot_id": run.snapshot_id,
                        "key_hash": m.key_hash,
                        "member_key": m.key,
                        "fingerprint": None if sent else m.fingerprint,
                        "member_values": None if sent else m.values.decode(),
                        "run_serial": run.serial,
                        "batch_index": entry.batch_index,
                        "kind": entry.kind.value,
                        "awaiting": sent,
                        "staged_fingerprint": m.fingerprint if sent else None,
                        "staged_values": m.values.decode() if sent else None,
                    }
                    for m in entry.members
                ]
                statement = self._insert()(table)
                changing = [*_STAGED, *(() if sent else ("fingerprint", "member_values"))]
                statement = statement.on_conflict_do_update(
                    index_elements=["snapshot_id", "key_hash"],
                    set_={name: statement.excluded[name] for name in changing},
                )
                session.execute(statement, rows)

    def stage_removed(self, run: SnapshotRun, batch_index: int | None, key_hashes: Sequence[int]) -> None:
        """Stage removed members sent in batch ``batch_index``; None: removals are not sent (forgotten at once)."""
        member = ChangeMemberRow
        values: dict[str, Any] = {
            "run_serial": run.serial,
            "batch_index": batch_index,
            "kind": ChangeKind.REMOVED.value,
        }
        values |= {"awaiting": True} if batch_index is not None else {"awaiting": False, "fingerprint": None}
        with self.database.transaction() as session:
            for chunk in _chunks(key_hashes):
                session.execute(
                    update(member)
                    .where(member.snapshot_id == run.snapshot_id, member.key_hash.in_(chunk))
                    .values(**values)
                )

    def in_flight(self, run: SnapshotRun, first: int, end: int) -> InFlightStaging:
        """What ``run`` staged under batch indexes ``first`` up to ``end`` (excluded): its batches awaiting their
        outcome, with the values staged (the partial index's rows), and whether any member was staged under those
        indexes (looked for among all the snapshot's rows only when none awaits: a resume's rare case)."""
        member = ChangeMemberRow
        in_range = and_(
            member.snapshot_id == run.snapshot_id,
            member.run_serial == run.serial,
            member.batch_index >= first,
            member.batch_index < end,
        )
        awaiting = (
            select(
                member.batch_index,
                member.kind,
                member.key_hash,
                member.member_key,
                member.staged_fingerprint,
                member.staged_values,
            )
            .where(in_range, member.awaiting == true())
            .order_by(member.batch_index, member.key_hash)
        )
        batches: dict[int, tuple[ChangeKind, list[StagedMember]]] = {}
        with self.database.connect("ChangeSnapshot") as connection:
            for index, kind, hashed, key, fingerprint, values in connection.execute(awaiting):
                sent = StagedMember(hashed, key, fingerprint or 0, (values or "{}").encode())
                batches.setdefault(index or 0, (ChangeKind(kind or ""), []))[1].append(sent)  # both set: in range
            staged = (
                bool(batches)
                or connection.execute(select(member.key_hash).where(in_range).limit(1)).first() is not None
            )
        found = [StagedBatch(index, kind, members) for index, (kind, members) in sorted(batches.items())]
        return InFlightStaging(found, staged)

    def last_values(self, run: SnapshotRun, key_hashes: Sequence[int]) -> dict[int, bytes]:
        """The last delivered values of members, by key hash."""
        member = ChangeMemberRow
        found: dict[int, bytes] = {}
        with self.database.connect("ChangeSnapshot") as connection:
            for chunk in _chunks(key_hashes):
                rows = connection.execute(
                    select(member.key_hash, member.member_values).where(
                        member.snapshot_id == run.snapshot_id, member.key_hash.in_(chunk)
                    )
                )
                found.update((h, (v or "{}").encode()) for h, v in rows)
        return found

    def forget(self, run: SnapshotRun, key_hashes: Sequence[int]) -> None:
        """Drop members never delivered that the query no longer selects (nothing to tell the partner)."""
        member = ChangeMemberRow
        with self.database.transaction() as session:
            for chunk in _chunks(key_hashes):
                session.execute(
                    delete(member).where(
                        member.snapshot_id == run.snapshot_id,
                        member.key_hash.in_(chunk),
                        member.fingerprint.is_(None),
                    )
                )

    def _insert(self) -> Any:
        return postgresql.insert if self.database.engine.dialect.name == "postgresql" else sqlite.insert


def _sent_again(session: Session, outcome: BatchOutcome, batch: Any) -> dict[int, list[int]]:
    """The batch's refused members that the definition's ``retry_rejected`` does not give up (so the next run
    sends them again), by the count of runs in a row that were refused: their key hashes."""
    refused = {key_hash(r.key): r for r in outcome.refused}
    if not refused:
        return {}
    policy = saved_retry_policy(session, outcome.definition)
    member = ChangeMemberRow
    pending: dict[int, list[int]] = defaultdict(list)
    for chunk in _chunks(list(refused)):
        rows = session.execute(
            select(member.key_hash, member.member_key, member.refused_runs).where(batch, member.key_hash.in_(chunk))
        )
        for hashed, key, refused_runs in rows:
            refusal = refused[hashed]
            current = (
                MemberRetry(key, refusal.status, "", classify(refusal.status), refused_runs, RetryState.PENDING, "")
                if refused_runs
                else None
            )
            state = after_refusal(
                current,
                key=key,
                status=refusal.status,
                reason=refusal.reason,
                run_id=str(outcome.run_id),
                policy=policy,
            )
            if state.state is RetryState.PENDING:
                pending[state.failed_runs].append(hashed)
    return pending


def drop_snapshot(session: Session, definition_id: str) -> None:
    """Drop a definition's snapshot (its members and runs): the definition is deleted, in ``session``'s
    transaction (:meth:`shared.catalog.definitions_store.SqlDefinitionsStore.delete`)."""
    snapshot_id = session.scalar(select(ChangeSnapshotRow.id).where(ChangeSnapshotRow.definition_id == definition_id))
    if snapshot_id is None:
        return
    session.execute(delete(ChangeMemberRow).where(ChangeMemberRow.snapshot_id == snapshot_id))
    session.execute(delete(ChangeRunRow).where(ChangeRunRow.snapshot_id == snapshot_id))
    session.execute(delete(ChangeSnapshotRow).where(ChangeSnapshotRow.id == snapshot_id))


class ChangeSnapshotFollower:
    """Moves snapshots as change-mode batch outcomes are folded (a :class:`~shared.catalog.runs_store.OutcomeFollower`).

    The staged entries of the outcome's batch become the delivered ones, except its refused members', which
    are unstaged (their last delivered values stay: a change again next run). Outcomes of other batches
    (``change`` unset) cost nothing.
    """

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """Confirm the staged members of each change-mode outcome in ``outcomes``, in the fold's ``session``."""
        for outcome in outcomes:
            if outcome.change is None:
                continue
            run = session.get(ChangeRunRow, str(outcome.run_id))
            if run is None:
                continue
            member = ChangeMemberRow
            batch = and_(
                member.snapshot_id == run.snapshot_id,
                member.run_serial == run.serial,
                member.batch_index == outcome.batch_index,
                member.awaiting == true(),  # as the partial index says it (SQLite matches it by its terms)
            )
            if outcome.member_keys is None or len(outcome.refused) < outcome.failed:
                # Failures it cannot name: none of the batch is taken as delivered (sent again next run).
                session.execute(
                    update(member).where(batch).values(awaiting=False, staged_fingerprint=None, staged_values=None)
                )
                continue
            delivered: dict[str, Any] = {"awaiting": False, "refused_runs": 0}
            if outcome.change is ChangeKind.REMOVED:
                delivered["fingerprint"] = None  # a tombstone: its values stay for a resumed run
            else:
                delivered |= {
                    "fingerprint": member.staged_fingerprint,
                    "member_values": member.staged_values,
                    "staged_fingerprint": None,
                    "staged_values": None,
                }
            for failed_runs, hashes in _sent_again(session, outcome, batch).items():
                for chunk in _chunks(hashes):
                    session.execute(
                        update(member)
                        .where(batch, member.key_hash.in_(chunk))
                        .values(awaiting=False, staged_fingerprint=None, staged_values=None, refused_runs=failed_runs)
                    )
            # The rest, given up members included, are taken as delivered: a member given up is sent again once
            # its values change, not by every run (``retry_rejected`` applies to change mode as to the others).
            session.execute(update(member).where(batch).values(**delivered))
