"""Whether a service's databases answer again after an outage: the probe that ends a consumer loop's backoff early.

A consumer loop whose handler met a database outage (:func:`shared.outages.is_outage`) waits its backoff (up to
30 s) in short pauses, asking a probe after each whether the dependency answers again
(:func:`shared.kafka.loop.wait_for_answer`). :class:`DatabaseAnswered` is that probe for the catalog and the member
query store: a bounded check of each engine, run on a thread of its own so that the loop's thread never waits for a
database. :func:`database_outage_probe` makes one for each wait from a service's engines.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from shared.catalog.engine import HIDE_PARAMETERS
from shared.outages import describe

log = structlog.get_logger(__name__)

#: A check unanswered this long means the database is away (a server answers ``SELECT 1`` in milliseconds).
UNANSWERED_IS_AWAY_SECONDS = 1.0
#: The bound on a check's connect and on its statement, in seconds (libpq's ``connect_timeout`` takes whole seconds,
#: 2 at least): a check in flight when its wait ends is over within it.
CHECK_TIMEOUT_SECONDS = 2

#: One database checked: returns when it answers, raises when it does not.
Check = Callable[[], None]
#: Runs a check off the caller's thread; its future is settled when the check is over.
Submit = Callable[[Check], "Future[None]"]


def engine_check(engine: Engine) -> Check:
    """A bounded check of the database behind ``engine``, on a connection of its own (never one of the engine's pool,
    whose connections the handlers hold and whose connect is not bounded).

    PostgreSQL (and any server): a fresh connection, its connect bounded by :data:`CHECK_TIMEOUT_SECONDS` (libpq's
    ``connect_timeout``, PostgreSQL's ``statement_timeout``), and ``SELECT 1``. SQLite: the file opened read-write
    (never created) with a busy timeout of that bound, and the schema read: a database another connection holds
    locked fails as the handlers' statements do."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            return lambda: None  # an in-memory database is never away
        return _sqlite_check(Path(database))
    postgres = url.get_backend_name() == "postgresql"
    connect_args: dict[str, object] = {"connect_timeout": CHECK_TIMEOUT_SECONDS} if postgres else {}
    # No pool: each check connects anew (a check after a restart proves the server accepts connections again).
    checker = create_engine(url, poolclass=NullPool, connect_args=connect_args, hide_parameters=HIDE_PARAMETERS)

    def check() -> None:
        with checker.connect() as connection:
            if postgres:
                connection.exec_driver_sql(f"SET statement_timeout = {CHECK_TIMEOUT_SECONDS * 1000}")
            connection.exec_driver_sql("SELECT 1").scalar()

    return check


def _sqlite_check(path: Path) -> Check:
    uri = f"{path.absolute().as_uri()}?mode=rw"

    def check() -> None:
        connection = sqlite3.connect(uri, uri=True, timeout=CHECK_TIMEOUT_SECONDS)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the shared lock
        finally:
            connection.close()

    return check


def on_a_thread(check: Check) -> Future[None]:
    """Run ``check`` on a daemon thread of its own (a check in flight never holds up the process's exit)."""
    future: Future[None] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every failure is the database not answering (the probe says so)
            future.set_exception(exc)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="database-probe", daemon=True).start()
    return future


class DatabaseAnswered:
    """A probe of a service's databases: True once they, seen away since the probe was made (a check failed, or one
    went unanswered for :data:`UNANSWERED_IS_AWAY_SECONDS`), answer a check again (every one of ``checks`` passes).

    The same semantics as :class:`shared.kafka.loop.MetadataAnswered`: databases that answer from the first check on
    were never away, so what interrupted the poll is something the check does not see (a lock, a statement's own
    timeout) and ending the wait early would handle the same records again every pause: the probe stays False and the
    backoff runs its course. The cost: databases back before the first check (made as the wait begins) are not seen
    away either, and that wait runs its course too.

    Asking costs no I/O on the caller's thread: it reads the future of the check in flight (``submit`` runs it
    elsewhere, a thread of its own by default) and starts the next one only after a failure, so one check at a time,
    at most one a pause of the wait. :meth:`close` starts no more; the one in flight, if any, is over within its own
    bound (:data:`CHECK_TIMEOUT_SECONDS` a database).
    """

    def __init__(
        self,
        checks: Sequence[Check],
        *,
        submit: Submit = on_a_thread,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = tuple(checks)
        self._submit = submit
        self._clock = clock
        self._seen_away = False
        self._closed = False
        self._asked_at = clock()
        self._check = submit(self._check_all)

    def _check_all(self) -> None:
        for check in self._checks:
            check()

    def __call__(self) -> bool:
        check = self._check
        if check.cancelled():
            return False  # closed: the wait is over
        if not check.done():
            # Still unanswered after a second: the server is not there (a connect waiting on its timeout).
            if self._clock() - self._asked_at >= UNANSWERED_IS_AWAY_SECONDS:
                self._seen_away = True
            return False
        error = check.exception()
        if error is not None:
            self._seen_away = True
            log.debug("database still away", error=describe(error))
            if not self._closed:
                self._asked_at = self._clock()
                self._check = self._submit(self._check_all)  # asked again, read at the next pause
            return False
        return self._seen_away

    @property
    def seen_away(self) -> bool:
        """Whether a database was seen away since the probe was made (a check failed or was long unanswered)."""
        return self._seen_away

    def close(self) -> None:
        """Start no more checks (the wait is over); the one in flight ends within its bound."""
        self._closed = True
        self._check.cancel()  # not started yet: never runs


def database_outage_probe(engines: Sequence[Engine]) -> Callable[[], DatabaseAnswered]:
    """A probe factory for a consumer loop (``ConsumerLoop(outage_probe=...)``): each wait after a database outage
    gets a :class:`DatabaseAnswered` of ``engines`` (the service's catalog, its member query store), their checks
    made once here."""
    checks = [engine_check(engine) for engine in engines]
    return lambda: DatabaseAnswered(checks)
