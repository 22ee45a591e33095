"""Refused members retried by the next runs: written from batch outcomes (an outcome follower in the
notifier's fold), taken by the extractor at a run's start, shown by ``exportctl dead-letters``."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.member_tables import MemberRetryRow, RunRetryRow
from shared.catalog.tables import CatalogObjectRow
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
        refused = [(str(o.run_id), member) for o in outcomes for member in o.refused]
        # Open: pending (a next run sends it again) or given up (a full run may still deliver it).
        open_ = session.scalar(
            select(MemberRetryRow.member_key)
            .where(MemberRetryRow.definition == definition, MemberRetryRow.state.in_(OPEN))
            .limit(1)
        )
        if not refused and open_ is None:
            return  # the common case: nothing refused, nothing waiting for a delivery (one indexed probe)
        delivered: dict[str, str] = {}
        if open_ is not None:
            for outcome in outcomes:
                refused_keys = {member.key for member in outcome.refused}
                for key in outcome.member_keys or ():
                    if key not in refused_keys:
                        delivered[key] = str(outcome.run_id)
        keys = sorted({member.key for _, member in refused} | delivered.keys())
        rows: dict[str, MemberRetryRow] = {}
        for chunk in _chunks(keys):
            for row in session.scalars(
                select(MemberRetryRow).where(
                    MemberRetryRow.definition == definition, MemberRetryRow.member_key.in_(chunk)
                )
            ):
                rows[row.member_key] = row
        for key, run_id in delivered.items():
            pending_row = rows.get(key)
            if pending_row is not None and pending_row.state in OPEN:
                self._write(pending_row, after_delivery(_retry_of(pending_row), run_id))
        policy = self._policy(session, definition) if refused else RetryRejected()
        for run_id, member in refused:
            found = rows.get(member.key)
            current = _retry_of(found) if found is not None else None
            state = after_refusal(
                current, key=member.key, status=member.status, reason=member.reason, run_id=run_id, policy=policy
            )
            if found is None:
                found = rows[member.key] = MemberRetryRow(definition=definition, member_key=member.key)
                session.add(found)
            self._write(found, state)

    @staticmethod
    def _write(row: MemberRetryRow, state: MemberRetry) -> None:
        row.status, row.reason, row.kind = state.status, state.reason, state.kind.value
        row.failed_runs, row.state, row.last_run_id = state.failed_runs, state.state.value, state.last_run
        row.updated_at = now()

    @staticmethod
    def _policy(session: Session, definition: str) -> RetryRejected:
        """The definition's ``retry_rejected`` as saved (the default when it is gone or holds none)."""
        spec = session.scalar(
            select(CatalogObjectRow.spec).where(
                CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name == definition
            )
        )
        return RetryRejected.model_validate((spec or {}).get("retry_rejected") or {})

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
