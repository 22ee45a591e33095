"""The dispatcher fleet's shared state on SQLite and PostgreSQL: heartbeats, the fleet's breakers from the
replicas' reports, each change pending until announced; and migration 0011 on a catalog with data."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.engine import make_engine
from shared.catalog.fleet_store import BreakerChange, SqlFleetStore
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from tests.integration.test_migrations import RUN_NIGHTLY, fill_baseline

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(catalog: CatalogStores) -> SqlFleetStore:
    return SqlFleetStore(catalog.database)


def test_replicas_that_beat_within_the_ttl_are_live_and_one_leaving_is_gone(fleet: SqlFleetStore):
    assert [b.replica_id for b in fleet.beat("b", 100.0, 10, None)] == ["b"]
    assert [(b.replica_id, b.drained_view) for b in fleet.beat("a", 105.0, 10, "v1")] == [("a", "v1"), ("b", None)]
    assert [b.replica_id for b in fleet.beat("a", 111.0, 10, "v1")] == ["a"]  # b silent for 11 s: counted out
    fleet.leave("a")
    assert [b.replica_id for b in fleet.beat("c", 112.0, 10, None)] == ["c"]  # b silent for 12 s


def _pending(changes: list[BreakerChange]) -> list[tuple[str, str, int]]:
    return [(c.profile, c.state, c.episode) for c in changes]


def test_the_fleets_breaker_is_open_while_any_live_replica_has_it_open(fleet: SqlFleetStore):
    assert fleet.report_breakers("a", [], 100.0, 10) == []  # nothing ever opened: nothing to announce
    opened = fleet.report_breakers("a", ["p"], 101.0, 10)
    assert _pending(opened) == [("p", "open", 1)]
    assert _pending(fleet.report_breakers("b", ["p"], 101.5, 10)) == [("p", "open", 1)]  # not announced yet
    fleet.mark_announced(opened)
    assert fleet.report_breakers("b", ["p"], 102.0, 10) == []  # a second replica opening it: no news
    assert fleet.report_breakers("a", [], 103.0, 10) == []  # a closed it, b still holds batches: still open
    closed = fleet.report_breakers("b", [], 104.0, 10)
    assert _pending(closed) == [("p", "closed", 1)]  # the last one closed it
    fleet.mark_announced(opened)  # a late mark of the opening does not hide the closing
    assert _pending(fleet.report_breakers("a", [], 105.0, 10)) == [("p", "closed", 1)]
    fleet.mark_announced(closed)
    assert fleet.report_breakers("a", [], 106.0, 10) == []
    assert _pending(fleet.report_breakers("a", ["p"], 107.0, 10)) == [("p", "open", 2)]  # a new episode


def test_a_replica_that_stops_reporting_no_longer_holds_the_fleets_breaker_open(fleet: SqlFleetStore):
    fleet.mark_announced(fleet.report_breakers("a", ["p", "q"], 100.0, 10))  # then a crashes
    assert fleet.report_breakers("b", [], 109.0, 10) == []  # within the TTL: still open
    assert _pending(fleet.report_breakers("b", [], 111.0, 10)) == [("p", "closed", 1), ("q", "closed", 1)]
    fleet.mark_announced(fleet.report_breakers("b", ["p"], 112.0, 10))
    fleet.forget_breakers("b")  # b stops
    assert _pending(fleet.report_breakers("c", [], 112.5, 10)) == [("p", "closed", 2)]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_migration_0011_adds_the_fleet_tables_to_a_catalog_with_data_and_removes_them(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0010")
    upgrade(engine, "0011")
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    try:
        assert catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY)) is not None  # the data is still there
        fleet = SqlFleetStore(catalog.database)
        assert [b.replica_id for b in fleet.beat("a", 1.0, 10, None)] == ["a"]
        assert _pending(fleet.report_breakers("a", ["p"], 1.0, 10)) == [("p", "open", 1)]
        outbox = SqlBreakerMailStore(catalog.database)
        assert outbox.claim(BreakerChange("p", "open", 1), "nightly")
    finally:
        catalog.close()
    downgrade(engine, "0010")
    assert current_revision(engine) == "0010"
    tables = {"dispatcher_replicas", "circuit_breakers", "open_breakers", "circuit_breaker_mails"}
    assert not tables & set(sa.inspect(engine).get_table_names())
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() > 0


def test_replicas_reporting_at_once_make_one_change(fleet: SqlFleetStore):
    start = threading.Barrier(4)
    results: list[list[BreakerChange]] = []

    def report(replica: str) -> None:
        start.wait(timeout=10)
        results.append(fleet.report_breakers(replica, ["p"], 100.0, 10))

    threads = [threading.Thread(target=report, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4
    assert {tuple(_pending(r)) for r in results} == {(("p", "open", 1),)}  # one opening, seen by all
    assert _pending(fleet.report_breakers("a", ["p"], 101.0, 10)) == [("p", "open", 1)]
