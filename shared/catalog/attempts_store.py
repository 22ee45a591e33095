"""The attempt inspector's table: the dispatcher adds what it captured (already masked), readers list it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.tables import AttemptRow
from shared.domain.attempts import CapturedAttempt


class SqlAttemptsStore:
    """Captured HTTP attempts, newest first, at most ``keep`` per (definition, profile)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int:
        """Insert ``attempts`` in one statement, then forget each of their (definition, profile) pairs' rows
        beyond the newest ``keep``, in the same transaction; how many rows were forgotten."""
        if not attempts:
            return 0
        with self.database.transaction() as session:
            session.execute(insert(AttemptRow), [_row(attempt) for attempt in attempts])
            pairs = {(attempt.definition, attempt.profile) for attempt in attempts}
            return sum(_keep_newest(session, definition, profile, keep) for definition, profile in sorted(pairs))

    def prune(self, before: datetime) -> int:
        """Forget the attempts made before ``before`` (the retention); how many went (an indexed delete)."""
        with self.database.transaction() as session:
            result = session.execute(delete(AttemptRow).where(AttemptRow.at < as_utc(before)))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def attempts(
        self,
        definition: str,
        *,
        profile: str | None = None,
        failed: bool | None = None,
        status: int | None = None,
        run_id: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[CapturedAttempt]:
        """A definition's attempts, newest first: of ``profile``, failed (or succeeded) only, with ``status``,
        of ``run_id``, when given."""
        query = select(AttemptRow).where(AttemptRow.definition == definition)
        if profile is not None:
            query = query.where(AttemptRow.profile == profile)
        if failed is not None:
            query = query.where(AttemptRow.success.is_(not failed))
        if status is not None:
            query = query.where(AttemptRow.status == status)
        if run_id is not None:
            query = query.where(AttemptRow.run_id == str(run_id))
        with self.database.transaction() as session:
            rows = session.scalars(query.order_by(AttemptRow.id.desc()).limit(limit))
            return [_attempt_of(row) for row in rows]


def _keep_newest(session: Session, definition: str, profile: str, keep: int) -> int:
    pair = (AttemptRow.definition == definition, AttemptRow.profile == profile)
    # The id of the newest row past the ``keep`` newest (NULL when there are not that many: nothing goes).
    oldest_kept = select(AttemptRow.id).where(*pair).order_by(AttemptRow.id.desc()).offset(keep).limit(1)
    result = session.execute(delete(AttemptRow).where(*pair, AttemptRow.id <= oldest_kept.scalar_subquery()))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _row(attempt: CapturedAttempt) -> dict[str, object]:
    return {
        "definition": attempt.definition,
        "profile": attempt.profile,
        "run_id": str(attempt.run_id),
        "batch_index": attempt.batch_index,
        "attempt": attempt.attempt,
        "at": as_utc(attempt.at),
        "method": attempt.method,
        "url": attempt.url,
        "request_headers": dict(attempt.request_headers),
        "request_body": attempt.request_body,
        "request_bytes": attempt.request_bytes,
        "status": attempt.status,
        "success": attempt.success,
        "latency_ms": attempt.latency_ms,
        "response_headers": dict(attempt.response_headers),
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


def _attempt_of(row: AttemptRow) -> CapturedAttempt:
    return CapturedAttempt(
        definition=row.definition,
        profile=row.profile,
        run_id=uuid.UUID(row.run_id),
        batch_index=row.batch_index,
        attempt=row.attempt,
        at=aware(row.at) or now(),
        method=row.method,
        url=row.url,
        request_headers=row.request_headers,
        request_body=row.request_body,
        request_bytes=row.request_bytes,
        status=row.status,
        success=row.success,
        latency_ms=row.latency_ms,
        response_headers=row.response_headers,
        response_body=row.response_body,
        error=row.error,
        id=row.id,
    )
