"""The catalog database every store shares: one engine, transactions, and the dialect-specific insert."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.engine import make_engine
from shared.errors import CatalogTimedOut

#: The SQLSTATEs of a statement PostgreSQL ended for waiting longer than a timeout an operator set on the catalog's
#: role or database (``lock_timeout``, ``statement_timeout``): :class:`CatalogTimedOut` (503), not done again.
TIMED_OUT = frozenset({"55P03", "57014"})


def now() -> datetime:
    """The current instant, in UTC (everything the catalog stores is UTC)."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """An instant converted to UTC for storing: SQLite stores the wall time without its offset.

    An instant within a day of datetime's range whose UTC form falls outside it (``0001-01-01T00:00+14:00``,
    a filter meaning "since the beginning") becomes the first or last representable instant.
    """
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


def aware(value: datetime | None) -> datetime | None:
    """An instant read back: SQLite hands back naive datetimes, which are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class CatalogDatabase:
    """The catalog's engine and sessions; each store owns its tables and goes through here."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> CatalogDatabase:
        return cls(make_engine(url))

    def close(self) -> None:
        """Close the database's connections."""
        self.engine.dispose()

    @contextmanager
    def transaction(self, kind: str | None = None, name: str | None = None) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on an exception.

        A catalog timeout is told here as everywhere (:meth:`_timeouts_told`): :class:`CatalogTimedOut` naming
        ``kind`` and ``name`` (what the store reads or writes, if it says), rolled back."""
        with self._timeouts_told(kind, name), self._sessions.begin() as session:
            yield session

    @contextmanager
    def begin(self, kind: str | None = None, name: str | None = None) -> Iterator[Connection]:
        """A Core connection in one transaction (``engine.begin()``: plain statements on a hot path, no ORM),
        committed on success, rolled back on an exception; a catalog timeout told as by :meth:`transaction`."""
        with self._timeouts_told(kind, name), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def connect(self, kind: str | None = None, name: str | None = None) -> Iterator[Connection]:
        """A Core connection for reads (``engine.connect()``: rolled back when closed, streamed results allowed);
        a catalog timeout told as by :meth:`transaction`."""
        with self._timeouts_told(kind, name), self.engine.connect() as connection:
            yield connection

    @staticmethod
    @contextmanager
    def _timeouts_told(kind: str | None, name: str | None) -> Iterator[None]:
        """The one place a catalog timeout is told (every store's reads and writes go through :meth:`transaction`,
        :meth:`begin` or :meth:`connect`; ``tests/unit/test_catalog_timed_out.py`` checks that no store uses the
        engine directly): a statement or commit PostgreSQL ended for a ``lock_timeout`` or ``statement_timeout``
        (:data:`TIMED_OUT`) is :class:`CatalogTimedOut` naming ``kind`` and ``name``; never the driver's error,
        whose text may quote the statement."""
        try:
            yield
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state not in TIMED_OUT:
                raise
            raise CatalogTimedOut(kind, name, str(state)) from None

    def lock_for_writing(self, session: Session) -> None:
        """Make ``session``'s transaction hold the database's write lock from here until it ends, so that what it
        reads next cannot change before it commits (a check of the catalog objects a write names, of those naming
        the one it deletes). SQLite: its pending writes are flushed (the first takes the lock), and with none,
        ``BEGIN IMMEDIATE`` (the driver opens a transaction only at a write: the reads before it are in none);
        another writer waits for it (up to the busy timeout). Not implied by an audit entry's flush: the store's
        writes may have none (tests ``test_sqlite_…_holds_the_write_lock…``). PostgreSQL: nothing (such a write
        locks the rows it relies on instead: ``FOR UPDATE``, ``FOR KEY SHARE``)."""
        if self.engine.dialect.name != "sqlite":
            return
        session.flush()
        connection = session.connection()
        if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def insert_ignore(self, session: Session, table: Any, values: dict[str, Any]) -> bool:
        """Insert a row unless its primary key exists; True when inserted.

        Uses ``ON CONFLICT DO NOTHING RETURNING``: whether a row comes back is the answer on every
        engine and driver (``rowcount`` is not reliable for ORM-enabled inserts).
        """
        key = next(iter(table.__table__.primary_key.columns))
        stmt = self.dialect_insert(table.__table__).values(**values).on_conflict_do_nothing().returning(key)
        return session.execute(stmt).first() is not None

    def dialect_insert(self, table: Any) -> Any:
        """An INSERT into ``table`` in the engine's dialect (which has ``on_conflict_do_nothing``)."""
        backend = self.engine.dialect.name
        if backend == "postgresql":
            return postgresql.insert(table)
        if backend == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"catalog on {backend} is not supported")  # pragma: no cover
