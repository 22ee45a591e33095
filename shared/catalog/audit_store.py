"""The audit log's table: entries are written by the definitions store with the change they record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.tables import AuditRow
from shared.domain.audit import AuditEntry


def write_entries(session: Session, entries: Sequence[AuditEntry]) -> None:
    """Add ``entries`` in ``session`` (the transaction of the change they record)."""
    session.add_all(
        AuditRow(
            at=as_utc(entry.at),
            actor=entry.actor,
            action=entry.action,
            kind=entry.kind,
            name=entry.name,
            business_units=list(entry.business_units),
            before=entry.before,
            after=entry.after,
        )
        for entry in entries
    )


class SqlAuditLog:
    """Reads the audit log, and forgets entries older than the retention."""

    #: Entries read per query when filtering by scope (the scope is checked on each entry).
    WINDOW = 1_000

    def __init__(self, database: CatalogDatabase, retention_days: int = 365) -> None:
        self.database, self.retention_days = database, retention_days

    def entries(
        self,
        *,
        readable: Callable[[AuditEntry], bool] = lambda _entry: True,
        name: str | None = None,
        kind: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Entries, newest first, filtered, and only those ``readable`` lets through (the reader's scope)."""
        found: list[AuditEntry] = []
        skipped, start = 0, 0
        with self.database.transaction("AuditEntry") as session:
            query = select(AuditRow).order_by(AuditRow.id.desc())
            if name:
                query = query.where(AuditRow.name == name)
            if kind:
                query = query.where(AuditRow.kind == kind)
            if actor:
                query = query.where(AuditRow.actor == actor)
            if since is not None:
                query = query.where(AuditRow.at >= as_utc(since))
            while len(found) < limit:
                rows = list(session.scalars(query.offset(start).limit(self.WINDOW)))
                for row in rows:
                    entry = _entry_of(row)
                    if not readable(entry):
                        continue
                    if skipped < offset:
                        skipped += 1
                        continue
                    found.append(entry)
                    if len(found) == limit:
                        break
                if len(rows) < self.WINDOW:
                    break
                start += self.WINDOW
        return found

    def prune(self) -> int:
        """Delete entries older than the retention; how many went."""
        cutoff = now() - timedelta(days=self.retention_days)
        with self.database.transaction("AuditEntry") as session:
            return int(session.execute(delete(AuditRow).where(AuditRow.at < cutoff)).rowcount)  # type: ignore[attr-defined]


def _entry_of(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        at=aware(row.at) or now(),
        actor=row.actor,
        action=row.action,
        kind=row.kind,
        name=row.name,
        business_units=tuple(row.business_units or ()),
        before=row.before,
        after=row.after,
        id=row.id,
    )
