"""Claims of a table's unsent rows for one attempt, by a lease on their next-attempt column (the catalog's clock).

A claim is one conditional ``UPDATE ... RETURNING`` of the rows still open (unsent, not given up) and due (no next
attempt time, or one past), in one transaction: their next attempt time is pushed ``lease_seconds`` ahead, and that
time is the claim's token. Of two callers claiming the same rows at once, each row is claimed by one of them; a claim
that fails claims nothing; at most :data:`MAX_CLAIMS` keys at once (a ``ValueError`` beyond: never cut in parts). A
caller that claims in a transaction of its own (beside its insert) executes :meth:`LeaseClaims.claiming` in it. The
holder renews its claims (the token unchanged) or releases those it did not try (due again at once); a claim whose
holder died lapses when the lease is over and is claimed again. Used by the notifications' ledger and the circuit
breaker emails' outbox.

A table with owner columns (the notifications' ledger: who claimed, the lease's end it wrote, and when it claimed or
last renewed) lets a claimant name itself in a claim (:class:`Claimant`: its name and its process's start on the
catalog's clock): that claimant claims its own claim again at once when the claim (or its last renewal) is older than
its process (it died between its claim and its record, and comes back under the same name); every other one waits for
the lease, and so does the same name's claim made since the process started (a live twin sharing the name, or the
same process after losing the catalog at its record: neither is a restart). A claim is its claimant's only while the
next-attempt column still equals the lease's end written with it, so that anything that moved it since (a claim
taken over once lapsed, a failed attempt's backoff, a release, an older release's writes that know no owner) ends
the ownership.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, DateTime, func, select, tuple_, type_coerce, update

from shared.catalog.database import CatalogDatabase
from shared.domain.runs import Claimant

#: Most keys claimed at once, in one statement; a sweep claims at most the 1,000 it read. Renewals and releases take
#: at most this many per statement too. Not the bind parameters' limits (SQLite 32,766, PostgreSQL 65,535) but
#: PostgreSQL's parser: it turns the row-value ``IN`` list into nested ORs, and 8,000 keys exceeded its default
#: ``max_stack_depth`` ("stack depth limit exceeded"; 6,000 passed): twice what any caller claims.
MAX_CLAIMS = 2_000

#: A row's primary key, as the table holds it.
RowKey = tuple[Any, ...]


def in_key_order(
    database: CatalogDatabase, key: Sequence[Any], conditions: Sequence[ColumnElement[bool]]
) -> list[ColumnElement[bool]]:
    """The conditions of a multi-row ``UPDATE`` (``conditions``, the rows' keys among them) that lock its rows in the
    order of ``key`` (the table's primary key's columns) on PostgreSQL: a materialized sub-select of the rows meeting
    them, ``ORDER BY key FOR NO KEY UPDATE`` (the lock the update takes), whose rows the update then updates (each
    locked, checked again if another's write came first, so none changes before the update's end). On
    its own, an ``UPDATE ... WHERE key IN (...)`` locks rows in the order its plan visits them (a sequential or bitmap
    scan: the table's physical order, which an update of a row changes), so that two statements updating overlapping
    rows could each hold a row the other waits for: a deadlock, one of them ended (SQLSTATE 40P01). In one statement,
    as before (session 53). SQLite has one writer at a time: ``conditions`` as they are."""
    if database.engine.dialect.name != "postgresql":
        return list(conditions)
    locked = (
        select(*key)
        .where(*conditions)
        .order_by(*key)
        .with_for_update(key_share=True)
        .cte("locked_in_key_order")
        .prefix_with("MATERIALIZED")
    )
    return [tuple_(*key).in_(select(*locked.c))]


def catalog_now(database: CatalogDatabase, seconds_ago: float = 0.0) -> Any:
    """The catalog's clock (minus ``seconds_ago``) as an SQL expression: claims and their leases are judged on one
    clock for every replica, not on each replica's own. On SQLite, the text its datetimes are stored as (UTC,
    microseconds), so that comparisons with stored instants hold."""
    if database.engine.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{-float(seconds_ago)} seconds")
    return func.now() - timedelta(seconds=seconds_ago) if seconds_ago else func.now()


def read_catalog_now(database: CatalogDatabase) -> datetime:
    """The catalog's clock now (:func:`catalog_now`, the expression claims are written with), read once: e.g. a
    process's start, which a :class:`~shared.domain.runs.Claimant` compares its claims with."""
    with database.connect("catalog clock") as connection:
        now: datetime = connection.execute(
            select(type_coerce(catalog_now(database), DateTime(timezone=True)))
        ).scalar_one()
    return now


class LeaseClaims:
    """Claims of ``table``'s rows keyed by ``key`` (its primary key's columns), by a lease on ``next_attempt``.

    ``still_open`` are the conditions of a row still to send (e.g. not sent, not given up): only those are claimed
    and renewed. ``kind`` is the catalog timeouts' kind of the statements (see :meth:`CatalogDatabase.begin`).
    ``owner``: the table's columns of the claimant's name, of the lease's end written with it and of the claim's (or
    its last renewal's) time, for claims that name their claimant (none: no claim names one). ``carried``: columns a
    claim reads back with each row it claims, in its own statement (the notifications' ledger: the recipients refused
    so far), for a caller that asks for them.
    """

    def __init__(
        self,
        database: CatalogDatabase,
        table: Any,
        key: Sequence[Any],
        next_attempt: Any,
        still_open: Sequence[ColumnElement[bool]],
        kind: str | None = None,
        owner: tuple[Any, Any, Any] | None = None,
        carried: Sequence[Any] = (),
    ) -> None:
        self.database, self.table, self.key, self.next_attempt = database, table, list(key), next_attempt
        self.still_open, self.kind, self.owner, self.carried = list(still_open), kind, owner, list(carried)

    def claim(
        self,
        keys: Sequence[RowKey],
        lease_seconds: float,
        what: str = "rows",
        claimant: Claimant | None = None,
        carried: dict[RowKey, tuple[Any, ...]] | None = None,
    ) -> dict[RowKey, datetime]:
        """Claim the rows of ``keys`` still open and due on the catalog's clock (a claim older than the lease is due
        again: its holder died), in one statement in its own transaction; with ``claimant``, in its name, and also those
        whose claim is still ``claimant``'s own from before its process started. Returns those claimed, each with its
        claim (the token :meth:`renew` and :meth:`release` take); ``carried`` (when given) gets each claimed row's
        :attr:`carried` columns, read by the same statement. More than :data:`MAX_CLAIMS` keys: a ``ValueError``
        (naming ``what`` is claimed)."""
        unique = sorted(set(keys))
        if len(unique) > MAX_CLAIMS:
            raise ValueError(f"at most {MAX_CLAIMS} {what} claimed at once, not {len(unique)}")
        if not unique:
            return {}
        with self.database.begin(self.kind) as connection:
            rows = list(connection.execute(self.claiming(unique, lease_seconds, claimant)))
        if carried is not None:
            carried.update(self.carried_by(rows))
        return _claimed(rows, len(self.key))

    def claiming(self, keys: Sequence[RowKey], lease_seconds: float, claimant: Claimant | None = None) -> Any:
        """The conditional claim of ``keys`` for ``lease_seconds`` (see :meth:`claim`), returning the keys claimed,
        their claim and their :attr:`carried` columns (:meth:`carried_by`): for a caller's own transaction (one key,
        beside its insert)."""
        if claimant is not None and self.owner is None:
            raise ValueError("a claim of this table names no claimant")
        free = self.due() if claimant is None else self.due() | self._owned_by(claimant)
        return self._updating(keys, [*self.still_open, free], lease_seconds, claimant=claimant)

    def carried_by(self, rows: Any) -> dict[RowKey, tuple[Any, ...]]:
        """The :attr:`carried` columns of each row a claim (:meth:`claiming`) returned, by its key."""
        width = len(self.key)
        return {tuple(row[:width]): tuple(row[width + 1 :]) for row in rows if row[width] is not None}

    def due(self) -> ColumnElement[bool]:
        """The condition of a row due now on the catalog's clock: never claimed, or its claim (or backoff) over."""
        due: ColumnElement[bool] = self.next_attempt.is_(None) | (self.next_attempt <= catalog_now(self.database))
        return due

    def _owned_by(self, claimant: Claimant) -> ColumnElement[bool]:
        """The condition of a row whose claim is still ``claimant``'s to take back: named so, nothing moved its next
        attempt since (see the module's notes), and claimed (or last renewed) before its process started."""
        assert self.owner is not None
        claimed_by, claimed_until, claimed_at = self.owner
        # Strictly before the start: a claim of the same instant may be a live twin's (the lease decides).
        owned: ColumnElement[bool] = (
            (claimed_by == claimant.name) & (claimed_until == self.next_attempt) & (claimed_at < claimant.started_at)
        )
        return owned

    def renew(self, claims: Mapping[RowKey, datetime], lease_seconds: float) -> dict[RowKey, datetime]:
        """Renew these claims for another ``lease_seconds``: those still the caller's (the claim unchanged, the row
        still open; a claim naming its claimant still names it). Returns them with their new claim; one not returned
        is no longer the caller's."""
        renewed: dict[RowKey, datetime] = {}
        for token, keys in _by_token(claims):
            with self.database.begin(self.kind) as connection:
                conditions = [*self.still_open, self.next_attempt == token]
                updating = self._updating(keys, conditions, lease_seconds, renewing=True)
                renewed |= _claimed(connection.execute(updating), len(self.key))
        return renewed

    def release(self, claims: Mapping[RowKey, datetime]) -> None:
        """End these claims, not attempted: due again at once rather than after the lease. Those no longer the
        caller's are left as they are."""
        for token, keys in _by_token(claims):
            conditions = [tuple_(*self.key).in_(keys), self.next_attempt == token, *self.still_open]
            with self.database.begin(self.kind) as connection:
                connection.execute(
                    update(self.table).where(*self._in_key_order(keys, conditions)).values({self.next_attempt: None})
                )

    def _updating(
        self,
        keys: Sequence[RowKey],
        conditions: Sequence[ColumnElement[bool]],
        lease_seconds: float,
        *,
        claimant: Claimant | None = None,
        renewing: bool = False,
    ) -> Any:
        """The update of ``keys`` meeting ``conditions`` to a new claim of ``lease_seconds``: in ``claimant``'s name
        (None: no one's), or, ``renewing``, in the name it had."""
        until = catalog_now(self.database, -lease_seconds)
        values = {self.next_attempt: until}
        if self.owner is not None:
            claimed_by, claimed_until, claimed_at = self.owner
            # The same expression twice in one statement: one value (PostgreSQL's now() is the transaction's start,
            # SQLite's 'now' one instant per statement step), so that the two columns are equal while it is the
            # claimant's.
            values[claimed_until] = until
            # The claim's (or renewal's) own time, not claimed_until minus a lease that may change between restarts.
            values[claimed_at] = catalog_now(self.database)
            if not renewing:
                values[claimed_by] = None if claimant is None else claimant.name
        return (
            update(self.table)
            .where(*self._in_key_order(keys, [tuple_(*self.key).in_(keys), *conditions]))
            .values(values)
            .returning(*self.key, self.next_attempt, *([] if renewing else self.carried))
            .execution_options(synchronize_session=False)
        )

    def _in_key_order(self, keys: Sequence[RowKey], conditions: list[ColumnElement[bool]]) -> list[ColumnElement[bool]]:
        """``conditions`` of an update of ``keys``' rows, locking them in key order when there are several
        (:func:`in_key_order`)."""
        return conditions if len(keys) < 2 else in_key_order(self.database, self.key, conditions)


def _claimed(rows: Any, width: int) -> dict[RowKey, datetime]:
    """Each claimed row's key (its first ``width`` columns) and its claim (the next one)."""
    return {tuple(row[:width]): row[width] for row in rows if row[width] is not None}


def _by_token(claims: Mapping[RowKey, datetime]) -> list[tuple[datetime, list[RowKey]]]:
    """Claims grouped by their token (one per claiming or renewing statement: one for a sweep's claims), at most
    :data:`MAX_CLAIMS` a group."""
    grouped: dict[datetime, list[RowKey]] = {}
    for key, token in sorted(claims.items()):
        grouped.setdefault(token, []).append(key)
    return [
        (token, keys[start : start + MAX_CLAIMS])
        for token, keys in grouped.items()
        for start in range(0, len(keys), MAX_CLAIMS)
    ]
