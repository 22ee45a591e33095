"""A consumer loop interrupted by its catalog goes on soon after the catalog answers again, however long its backoff
has grown: a real PostgreSQL stopped and started again, a real SQLite file locked and released."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from devtools.postgres import LocalPostgres
from shared.catalog.engine import make_engine
from shared.database_probe import DatabaseAnswered, database_outage_probe
from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics
from shared.kafka import loop as consumer_loop
from shared.kafka.loop import MAX_INTERRUPTION_BACKOFF_SECONDS
from shared.settings import CommonSettings
from tests.integration.test_consumer_interruptions import LockedDatabase, _running, _wait
from tests.integration.test_consumer_loop import _loop
from tests.kafka_helpers import produce, read_to_end

pytestmark = pytest.mark.integration

#: How soon after its catalog is back an interrupted loop handles the record it handed back: a probe's pause and a
#: check (a connect). Far below the 30 s backoff it outlasts.
RESUMED_WITHIN_SECONDS = 10.0
#: How soon the loop's probe sees the catalog away: its first check refused at once (PostgreSQL stopped), or
#: unanswered for a second (SQLite locked: a 2 s busy timeout), read at the next 0.5 s pause.
PROBE_SEES_AWAY_WITHIN = 5.0


class StoppedPostgres:
    """A catalog on a PostgreSQL server of the test's own, stopped (``pg_ctl stop -m fast``) and started again."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server
        self.engine = make_engine(server.create_database("catalog"))  # as the services' (pool_pre_ping)
        with self.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE handled (definition TEXT)")

    def away(self) -> None:
        self.server.stop()

    def back(self) -> None:
        self.server.start()

    def handled(self) -> list[str]:
        with self.engine.connect() as connection:
            return [row[0] for row in connection.exec_driver_sql("SELECT definition FROM handled ORDER BY ctid")]

    def close(self) -> None:
        self.engine.dispose()


class LockedSqlite:
    """A SQLite catalog another connection holds an exclusive lock on while it is away."""

    def __init__(self, path: Path) -> None:
        self.database = LockedDatabase(path)  # locked from the start
        self.database.release()
        self.engine = self.database.engine

    def away(self) -> None:
        self.database._blocker.execute("BEGIN EXCLUSIVE")

    def back(self) -> None:
        self.database.release()

    def handled(self) -> list[str]:
        return self.database.handled()

    def close(self) -> None:
        self.database.close()


Catalog = StoppedPostgres | LockedSqlite


@contextmanager
def _catalog(dialect: str, tmp_path: Path) -> Iterator[Catalog]:
    if dialect == "sqlite":
        catalog: Catalog = LockedSqlite(tmp_path / "catalog.db")
        try:
            yield catalog
        finally:
            catalog.close()
        return
    with LocalPostgres() as server:  # the test's own: the session's server is not stopped under the other tests
        catalog = StoppedPostgres(server)
        try:
            yield catalog
        finally:
            catalog.close()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
@pytest.mark.parametrize("rounds_in_flight", [0, 2], ids=["one-by-one", "rounds-in-flight"])
def test_a_loop_interrupted_by_its_catalog_resumes_soon_after_the_catalog_is_back_whatever_its_backoff(
    settings: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dialect: str, rounds_in_flight: int
):
    # The longest backoff from the first interruption on (as after a few in a row): the loop would otherwise wait it
    # out after the catalog is back.
    monkeypatch.setattr(consumer_loop, "INTERRUPTION_BACKOFF_SECONDS", MAX_INTERRUPTION_BACKOFF_SECONDS)
    ensure_topics(settings)
    topics = settings.topics
    with _catalog(dialect, tmp_path) as catalog:
        _resumes_after_the_catalog_is_back(settings, catalog, rounds_in_flight)
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == [], "an outage is no dead letter"


def _resumes_after_the_catalog_is_back(settings: CommonSettings, catalog: Catalog, rounds_in_flight: int) -> None:
    topics = settings.topics

    def handler(request: RunRequested) -> list[Outgoing]:
        with catalog.engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO handled VALUES (:d)"), {"d": request.definition})
        return []

    made: list[DatabaseAnswered] = []
    probes = database_outage_probe([catalog.engine])

    def outage_probe() -> DatabaseAnswered:
        made.append(probes())
        return made[-1]

    loop = _loop(
        settings, handler, rounds=rounds_in_flight > 0, service="db-resume", rounds_in_flight=max(1, rounds_in_flight)
    )
    # Set, not given to the constructor: a loop without the probe (the code before) runs this test as it is, and
    # fails it by its 30 s wait.
    loop.outage_probe = outage_probe

    def send(definition: str) -> None:
        produce(
            settings.kafka_bootstrap_servers,
            topics.run_requests,
            [("k", RunRequested(definition=definition).to_bytes())],
        )

    send("first")
    with _running(loop):
        _wait(lambda: catalog.handled() == ["first"])  # the pool holds a connection the outage breaks
        catalog.away()
        send("in-outage")
        _wait(lambda: loop.interrupted)  # handed back, and the loop waits 30 s
        interrupted = time.monotonic()
        # The catalog comes back once the loop's probe has seen it away (a catalog back before the probe's first check
        # was never away for it: that wait runs its course). A loop without a probe (the code before): after 5 s.
        _wait(lambda: bool(made and made[-1].seen_away) or time.monotonic() - interrupted > PROBE_SEES_AWAY_WITHIN)
        catalog.back()
        back = time.monotonic()
        _wait(lambda: "in-outage" in catalog.handled() or time.monotonic() - back > RESUMED_WITHIN_SECONDS)
        resumed = time.monotonic() - back
        assert catalog.handled() == ["first", "in-outage"], f"{resumed:.1f} s after the catalog was back"
        _wait(lambda: not loop.interrupted)
    assert made, "the loop's wait had a database probe"
    assert made[0].seen_away, "which saw the catalog away before it was back"
