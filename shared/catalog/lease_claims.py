"""Claims of a table's unsent rows for one attempt, by a lease on their next-attempt column (the catalog's clock).

A claim is one conditional ``UPDATE ... RETURNING`` of the rows still open (unsent, not given up) and due (no next
attempt time, or one past): their next attempt time is pushed ``lease_seconds`` ahead, and that time is the claim's
token. Of two callers claiming the same rows at once, each row is claimed by one of them. The holder renews its
claims (the token unchanged) or releases those it did not try (due again at once); a claim whose holder died lapses
when the lease is over and is claimed again. Used by the notifications' ledger and the circuit breaker emails'
outbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, tuple_, update

from shared.catalog.database import CatalogDatabase

#: Keys claimed per statement (a few parameters each, well within SQLite's 32,766).
CLAIMS_PER_STATEMENT = 500

#: A row's primary key, as the table holds it.
RowKey = tuple[Any, ...]


def catalog_now(database: CatalogDatabase, seconds_ago: float = 0.0) -> Any:
    """The catalog's clock (minus ``seconds_ago``) as an SQL expression: claims and their leases are judged on one
    clock for every replica, not on each replica's own. On SQLite, the text its datetimes are stored as (UTC,
    microseconds), so that comparisons with stored instants hold."""
    if database.engine.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{-float(seconds_ago)} seconds")
    return func.now() - timedelta(seconds=seconds_ago) if seconds_ago else func.now()


class LeaseClaims:
    """Claims of ``table``'s rows keyed by ``key`` (its primary key's columns), by a lease on ``next_attempt``.

    ``still_open`` are the conditions of a row still to send (e.g. not sent, not given up): only those are claimed
    and renewed. ``kind`` is the catalog timeouts' kind of the statements (see :meth:`CatalogDatabase.begin`).
    """

    def __init__(
        self,
        database: CatalogDatabase,
        table: Any,
        key: Sequence[Any],
        next_attempt: Any,
        still_open: Sequence[ColumnElement[bool]],
        kind: str | None = None,
    ) -> None:
        self.database, self.table, self.key, self.next_attempt = database, table, list(key), next_attempt
        self.still_open, self.kind = list(still_open), kind

    def claim(self, keys: Sequence[RowKey], lease_seconds: float) -> dict[RowKey, datetime]:
        """Claim the rows of ``keys`` still open and due on the catalog's clock (a claim older than the lease is due
        again: its holder died). Returns those claimed, each with its claim (the token :meth:`renew` and
        :meth:`release` take)."""
        due = self.next_attempt.is_(None) | (self.next_attempt <= catalog_now(self.database))
        return self._update(sorted(set(keys)), [*self.still_open, due], lease_seconds)

    def renew(self, claims: Mapping[RowKey, datetime], lease_seconds: float) -> dict[RowKey, datetime]:
        """Renew these claims for another ``lease_seconds``: those still the caller's (the claim unchanged, the row
        still open). Returns them with their new claim; one not returned is no longer the caller's."""
        renewed: dict[RowKey, datetime] = {}
        for token, keys in _by_token(claims):
            renewed |= self._update(keys, [*self.still_open, self.next_attempt == token], lease_seconds)
        return renewed

    def release(self, claims: Mapping[RowKey, datetime]) -> None:
        """End these claims, not attempted: due again at once rather than after the lease. Those no longer the
        caller's are left as they are."""
        for token, keys in _by_token(claims):
            with self.database.begin(self.kind) as connection:
                connection.execute(
                    update(self.table)
                    .where(tuple_(*self.key).in_(keys), self.next_attempt == token, *self.still_open)
                    .values({self.next_attempt: None})
                )

    def _update(
        self, keys: Sequence[RowKey], conditions: Sequence[ColumnElement[bool]], lease_seconds: float
    ) -> dict[RowKey, datetime]:
        claimed: dict[RowKey, datetime] = {}
        for start in range(0, len(keys), CLAIMS_PER_STATEMENT):
            with self.database.begin(self.kind) as connection:
                rows = connection.execute(
                    update(self.table)
                    .where(tuple_(*self.key).in_(keys[start : start + CLAIMS_PER_STATEMENT]), *conditions)
                    .values({self.next_attempt: catalog_now(self.database, -lease_seconds)})
                    .returning(*self.key, self.next_attempt)
                )
                claimed.update({tuple(row[:-1]): row[-1] for row in rows if row[-1] is not None})
        return claimed


def _by_token(claims: Mapping[RowKey, datetime]) -> list[tuple[datetime, list[RowKey]]]:
    """Claims grouped by their token (one per claiming statement, usually one in all), at most
    :data:`CLAIMS_PER_STATEMENT` a group."""
    grouped: dict[datetime, list[RowKey]] = {}
    for key, token in sorted(claims.items()):
        grouped.setdefault(token, []).append(key)
    return [
        (token, keys[start : start + CLAIMS_PER_STATEMENT])
        for token, keys in grouped.items()
        for start in range(0, len(keys), CLAIMS_PER_STATEMENT)
    ]
