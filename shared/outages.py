"""Outages: a dependency away for a while (the catalog or member database, the broker), told apart from a
record's own failure.

A record whose handling meets an outage is neither handled nor dead-lettered: the consumer loop hands it
back, waits, and handles it again once the dependency answers. Dead-lettering it instead would turn a
30-second database restart into thousands of dead letters to replay by hand.

Only failures that say "the connection is not there" count: a query's own error (a syntax error, a missing
table, a constraint) is the record's or the definition's fault and is reported as before.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sa_exc

from shared.errors import RetryableError

#: PostgreSQL SQLSTATEs of a server that is away or not accepting work yet: connection exceptions (class
#: 08), administrator/crash shutdown, "the database system is starting up", too many connections.
_PG_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
#: SQLite's words for a file it cannot use right now (another process holds it, or the volume is away).
_SQLITE_OUTAGE_WORDS = ("database is locked", "unable to open database file", "disk i/o error")


class DependencyUnavailable(RetryableError):
    """A dependency did not answer: what needed it is done again later, not failed."""


def is_outage(error: BaseException) -> bool:
    """True when ``error`` (or what it was raised from) says a database was unreachable, not that a statement
    was wrong."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _names_an_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def describe(error: BaseException) -> str:
    """One line saying what failed, without the statement or its parameters (they may hold members' data)."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        error = error.orig
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _names_an_outage(error: BaseException) -> bool:
    if isinstance(error, DependencyUnavailable):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):  # pool exhausted, pre-ping failed
        return True
    if isinstance(error, sqlite3.OperationalError):
        return any(words in str(error).lower() for words in _SQLITE_OUTAGE_WORDS)
    return _is_postgres_outage(error)


def _is_postgres_outage(error: BaseException) -> bool:
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = getattr(error, "sqlstate", None)
    # No SQLSTATE: the client could not reach the server at all (refused, reset, closed unexpectedly).
    return state is None or state.startswith(_PG_OUTAGE_STATES)
