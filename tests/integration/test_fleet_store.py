"""The dispatcher fleet's shared state on SQLite and PostgreSQL: heartbeats, breakers changed and announced
once; and migration 0011 on a catalog with data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

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


def test_each_opening_and_closing_of_a_shared_breaker_is_made_and_announced_once(fleet: SqlFleetStore):
    opened = fleet.change_breaker("p", "open")
    assert opened == BreakerChange("p", "open", 1)
    assert fleet.change_breaker("p", "open") is None  # a second replica opening it: nothing to announce
    closed = fleet.change_breaker("p", "closed")
    assert closed == BreakerChange("p", "closed", 1)
    assert fleet.change_breaker("p", "closed") is None
    assert fleet.claim_announcement(opened)
    assert fleet.claim_announcement(closed)
    assert not fleet.claim_announcement(closed)  # redelivered
    assert not fleet.claim_announcement(opened)  # late: its closing was announced already
    assert fleet.change_breaker("p", "open") == BreakerChange("p", "open", 2)


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
    catalog = CatalogStores.from_url(database_url)
    try:
        assert catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY)) is not None  # the data is still there
        fleet = SqlFleetStore(catalog.database)
        assert [b.replica_id for b in fleet.beat("a", 1.0, 10, None)] == ["a"]
        assert fleet.change_breaker("p", "open") == BreakerChange("p", "open", 1)
    finally:
        catalog.close()
    downgrade(engine, "0010")
    assert current_revision(engine) == "0010"
    assert not {"dispatcher_replicas", "circuit_breakers"} & set(sa.inspect(engine).get_table_names())
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() > 0
