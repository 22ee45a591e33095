"""The attempt inspector's table: the dispatcher adds what it captured (already masked), readers list it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.tables import AttemptRow, CatalogObjectRow, RunRow
from shared.domain.attempts import CapturedAttempt, attempt_fields
from shared.domain.catalog_objects import ExportDefinition


class SqlAttemptsStore:
    """Captured HTTP attempts, newest first, at most ``keep`` failed and ``keep`` successful per (definition,
    profile); each row under its definition's id, which readers select by."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int:
        """Insert ``attempts`` in one statement (each under its definition's id: its run's, else the one of that
        name now), then forget the rows of each of their (definition, profile, success) beyond the newest
        ``keep``, in the same transaction; how many rows were forgotten."""
        if not attempts:
            return 0
        with self.database.transaction("CapturedAttempt") as session:
            ids = _definition_ids(session, attempts)
            rows = [_row(attempt) | {"definition_id": ids(attempt)} for attempt in attempts]
            session.execute(insert(AttemptRow), rows)
            slots = {(attempt.definition, attempt.profile, attempt.success) for attempt in attempts}
            return sum(_keep_newest(session, *slot, keep) for slot in sorted(slots))

    def prune(self, before: datetime) -> int:
        """Forget the attempts made before ``before`` (the retention); how many went (an indexed delete)."""
        with self.database.transaction("CapturedAttempt") as session:
            result = session.execute(delete(AttemptRow).where(AttemptRow.at < as_utc(before)))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def attempts(
        self,
        definition_id: uuid.UUID,
        *,
        profile: str | None = None,
        failed: bool | None = None,
        status: int | None = None,
        run_id: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[CapturedAttempt]:
        """The attempts of the definition of id ``definition_id``, newest first: of ``profile``, failed (or
        succeeded) only, with ``status``, of ``run_id``, when given."""
        query = select(AttemptRow).where(AttemptRow.definition_id == str(definition_id))
        if profile is not None:
            query = query.where(AttemptRow.profile == profile)
        if failed is not None:
            query = query.where(AttemptRow.success.is_(not failed))
        if status is not None:
            query = query.where(AttemptRow.status == status)
        if run_id is not None:
            query = query.where(AttemptRow.run_id == str(run_id))
        with self.database.transaction("CapturedAttempt") as session:
            rows = session.scalars(query.order_by(AttemptRow.id.desc()).limit(limit))
            return [_attempt_of(row) for row in rows]


def _definition_ids(session: Session, attempts: Sequence[CapturedAttempt]) -> Callable[[CapturedAttempt], str | None]:
    """Each attempt's definition id: its run's (the definition the run was of, even if one of the same name was
    created since), else the id of the definition of that name (a run not recorded yet), else None (gone)."""
    runs = {str(attempt.run_id) for attempt in attempts}
    names = {attempt.definition for attempt in attempts}
    by_run: dict[str, str | None] = {
        run_id: definition_id
        for run_id, definition_id in session.execute(
            select(RunRow.run_id, RunRow.definition_id).where(RunRow.run_id.in_(runs), RunRow.definition_id.isnot(None))
        )
    }
    by_name: dict[str, str] = {
        name: id_
        for name, id_ in session.execute(
            select(CatalogObjectRow.name, CatalogObjectRow.id).where(
                CatalogObjectRow.kind == ExportDefinition.__name__, CatalogObjectRow.name.in_(names)
            )
        )
    }
    return lambda attempt: by_run.get(str(attempt.run_id)) or by_name.get(attempt.definition)


def _keep_newest(session: Session, definition: str, profile: str, success: bool, keep: int) -> int:
    pair = (AttemptRow.definition == definition, AttemptRow.profile == profile, AttemptRow.success.is_(success))
    # The id of the newest row past the ``keep`` newest (NULL when there are not that many: nothing goes).
    oldest_kept = select(AttemptRow.id).where(*pair).order_by(AttemptRow.id.desc()).offset(keep).limit(1)
    result = session.execute(delete(AttemptRow).where(*pair, AttemptRow.id <= oldest_kept.scalar_subquery()))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _row(attempt: CapturedAttempt) -> dict[str, object]:
    return attempt_fields(attempt) | {"run_id": str(attempt.run_id), "at": as_utc(attempt.at)}


def _attempt_of(row: AttemptRow) -> CapturedAttempt:
    return CapturedAttempt(
        definition=row.definition,
        definition_id=uuid.UUID(row.definition_id) if row.definition_id else None,
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
