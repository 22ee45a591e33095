"""Refused members retried by the next runs: written from batch outcomes (an outcome follower in the
notifier's fold), taken by the extractor at a run's start, shown by ``exportctl dead-letters``."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import cast

from pydantic import ValidationError
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.driver_inserts import DriverInsert
from shared.catalog.member_tables import MemberRetryRow, RunRetryRow
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
_COLUMNS = ["definition", "member_key", "status", "reason", "kind", "failed_runs", "state", "last_run_id", "updated_at"]
_INSERT = DriverInsert(cast(Table, MemberRetryRow.__table__), _COLUMNS)
#: Open members of a definition matched in memory at most (beyond: by each batch's keys).
OPEN_IN_MEMORY = 50_000
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


class SqlMemberRetries:
    """The ``member_retries`` table (per definition and member key) and each run's share of it (``run_retries``)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    # --- the notifier's fold (OutcomeFollower) ----------------------------------------------------------

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """Refused members become (or stay) pending, or are given up; pending members delivered are resolved."""
        by_definition: dict[str, list[BatchOutcome]] = defaultdict(list)
        for outcome in outcomes:
            if outcome.member_keys is not None:
                by_definition[outcome.definition].append(outcome)
        for definition, group in by_definition.items():
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
        # Usually few (the members failing now): read once a fold, so a batch's delivered members are matched in
        # memory, not by a query a batch; past OPEN_IN_MEMORY, by the batch's keys instead (bounded memory).
        open_keys = set(
            session.scalars(
                select(MemberRetryRow.member_key)
                .where(MemberRetryRow.definition == definition, MemberRetryRow.state.in_(OPEN))
                .limit(OPEN_IN_MEMORY + 1)
            )
        )
        if not refused and not open_keys:
            return  # the common case: nothing refused, nothing waiting for a delivery (one indexed read)
        many = len(open_keys) > OPEN_IN_MEMORY
        delivered: dict[str, str] = {}
        for outcome in outcomes:
            if open_keys:
                refused_keys = {member.key for member in outcome.refused}
                keys = outcome.member_keys or []
                for key in self._open_among(session, definition, keys) if many else open_keys.intersection(keys):
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
        self._write(session, definition, changed, current)

    @staticmethod
    def _open_among(session: Session, definition: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are open (read by key, in chunks)."""
        found: set[str] = set()
        for chunk in _chunks(keys):
            found.update(
                session.scalars(
                    select(MemberRetryRow.member_key).where(
                        MemberRetryRow.definition == definition,
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
            for row in session.scalars(
                select(MemberRetryRow).where(
                    MemberRetryRow.definition == definition, MemberRetryRow.member_key.in_(chunk)
                )
            ):
                current[row.member_key] = _retry_of(row)
        return current

    @staticmethod
    def _write(
        session: Session, definition: str, changed: dict[str, MemberRetry], current: dict[str, MemberRetry]
    ) -> None:
        """New rows in one INSERT, changed ones in one UPDATE (executemany by primary key)."""
        at = now()

        def values(state: MemberRetry) -> dict[str, object]:
            return {
                "status": state.status,
                "reason": state.reason,
                "kind": state.kind.value,
                "failed_runs": state.failed_runs,
                "state": state.state.value,
                "last_run_id": state.last_run,
                "updated_at": at,
            }

        table = cast(Table, MemberRetryRow.__table__)
        _INSERT.execute(
            session,
            [{"definition": definition, "member_key": k} | values(s) for k, s in changed.items() if k not in current],
        )
        updated = [
            {"b_definition": definition, "b_key": k} | {f"b_{name}": v for name, v in values(s).items()}
            for k, s in changed.items()
            if k in current
        ]
        if updated:
            columns = table.c
            statement = (
                update(table)
                .where(columns.definition == bindparam("b_definition"), columns.member_key == bindparam("b_key"))
                .values({name: bindparam(f"b_{name}") for name in values(next(iter(changed.values())))})
            )
            session.execute(statement, updated)

    @staticmethod
    def _policy(session: Session, definition: str) -> RetryRejected:
        """The definition's ``retry_rejected`` as saved (the default when it is gone or holds none)."""
        spec = session.scalar(
            select(CatalogObjectRow.spec).where(
                CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name == definition
            )
        )
        try:
            return RetryRejected.model_validate((spec or {}).get("retry_rejected") or {})
        except ValidationError:  # saved by another release, say: the defaults, never a fold that cannot go on
            return RetryRejected()

    # --- the extractor ------------------------------------------------------------------------------------

    def take_retries(self, run_id: uuid.UUID, definition: str) -> list[str]:
        """The definition's pending retries this run sends again, in key order: taken at the run's first start,
        the same set after a resume (a run never takes the members it refused itself)."""
        with self.database.transaction() as session:
            taken = list(
                session.scalars(
                    select(RunRetryRow.member_key)
                    .where(RunRetryRow.run_id == str(run_id))
                    .order_by(RunRetryRow.member_key)
                )
            )
            if taken:
                return taken
            keys = list(
                session.scalars(
                    select(MemberRetryRow.member_key)
                    .where(
                        MemberRetryRow.definition == definition,
                        MemberRetryRow.state == RetryState.PENDING.value,
                        MemberRetryRow.last_run_id != str(run_id),
                    )
                    .order_by(MemberRetryRow.member_key)
                )
            )
            if keys:
                session.execute(insert(RunRetryRow), [{"run_id": str(run_id), "member_key": key} for key in keys])
            return keys

    def resolve_gone(self, definition: str, keys: Sequence[str], run_id: uuid.UUID) -> None:
        """Pending members the definition's query no longer returns: nothing to send again."""
        with self.database.transaction() as session:
            for chunk in _chunks(keys):
                session.execute(
                    update(MemberRetryRow)
                    .where(
                        MemberRetryRow.definition == definition,
                        MemberRetryRow.member_key.in_(chunk),
                        MemberRetryRow.state == RetryState.PENDING.value,
                    )
                    .values(state=RetryState.GONE.value, last_run_id=str(run_id), updated_at=now())
                )

    # --- readers --------------------------------------------------------------------------------------------

    def states(self, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]:
        """The retry state of each of ``keys`` the definition has one for."""
        found: dict[str, MemberRetry] = {}
        with self.database.transaction() as session:
            for chunk in _chunks(sorted(set(keys))):
                for row in session.scalars(
                    select(MemberRetryRow).where(
                        MemberRetryRow.definition == definition, MemberRetryRow.member_key.in_(chunk)
                    )
                ):
                    found[row.member_key] = _retry_of(row)
        return found
