"""The outbox of the circuit breaker emails: one row per (change, definition), sent once, retried until sent.

The notifier claims a change's email for a definition before sending it (:meth:`SqlBreakerMailStore.claim`),
marks it sent or its error after (:meth:`SqlBreakerMailStore.mark`), and its sweep tries the unsent ones
again (:meth:`SqlBreakerMailStore.unsent`): a change announced twice is mailed once; an SMTP failure or a
crash between the claim and the send delays the email, never loses it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from shared.catalog.database import CatalogDatabase, aware
from shared.catalog.tables import BreakerMailRow
from shared.domain.fleet import BreakerChange


def _change(row: BreakerMailRow) -> BreakerChange:
    state = "closed" if row.ordinal % 2 else "open"
    return BreakerChange(row.profile, state, row.ordinal // 2, aware(row.changed_at))


class SqlBreakerMailStore:
    """Which breaker emails were sent, in the catalog."""

    #: Failed attempts after which an email is given up (about as many sweeps).
    MAX_ATTEMPTS = 20

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def claim(self, change: BreakerChange, definition: str) -> bool:
        """True when ``change``'s email to ``definition``'s recipients is still to send (the caller sends it)."""
        at = change.at or datetime.now(UTC)
        with self.database.transaction() as session:
            self.database.insert_ignore(
                session,
                BreakerMailRow,
                {"profile": change.profile, "ordinal": change.ordinal, "definition": definition, "changed_at": at},
            )
            row = session.get(BreakerMailRow, (change.profile, change.ordinal, definition))
            return row is not None and row.sent_at is None and (row.attempts or 0) < self.MAX_ATTEMPTS

    def mark(self, change: BreakerChange, definition: str, error: str | None = None, give_up: bool = False) -> None:
        """Record the email as sent, or the error of a failed attempt: tried again by the sweep (``give_up``:
        never again)."""
        with self.database.transaction() as session:
            row = session.get(BreakerMailRow, (change.profile, change.ordinal, definition), with_for_update=True)
            if row is None:
                return
            if error is None:
                row.sent_at, row.last_error = datetime.now(UTC), None
            else:
                row.attempts, row.last_error = (row.attempts or 0) + 1, error
                if give_up:
                    row.attempts = max(row.attempts, self.MAX_ATTEMPTS)

    def unsent(self, limit: int = 100) -> list[tuple[BreakerChange, str]]:
        """(change, definition) of the emails claimed and not sent yet, nor given up; oldest first."""
        with self.database.transaction() as session:
            rows = session.scalars(
                select(BreakerMailRow)
                .where(BreakerMailRow.sent_at.is_(None), BreakerMailRow.attempts < self.MAX_ATTEMPTS)
                .order_by(BreakerMailRow.changed_at, BreakerMailRow.profile, BreakerMailRow.definition)
                .limit(limit)
            ).all()
            return [(_change(row), row.definition) for row in rows]
