"""Migration 0016 (who paused a definition's schedule) on SQLite and PostgreSQL, on a catalog with data: the catalog
objects keep their rows, who paused is not known for any of them (null), a pause after the upgrade records the run
whose failures paused it, and a downgrade keeps the objects and drops the column."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.application.schedules import pause_schedule, paused_by_run, who_paused
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from tests.integration.test_migrations import engine, fill_baseline, name_baseline_objects

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

COLUMNS = "id, kind, name, version, spec"


def objects(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(f"SELECT {COLUMNS} FROM catalog_objects ORDER BY id"))]


def test_0016_keeps_the_catalog_objects_records_who_pauses_after_it_and_downgrades_keeping_them(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0015")
    before = objects(engine)

    upgrade(engine, "0016")
    upgrade(engine)

    assert objects(engine) == before
    with engine.begin() as connection:
        assert set(connection.execute(sa.text("SELECT schedule_paused_by FROM catalog_objects")).scalars()) == {None}
    name_baseline_objects(engine)  # to pause a definition below
    catalog = CatalogStores.from_url(database_url)
    run_id = uuid.uuid4()
    try:
        assert who_paused("nightly-gold", store=catalog.definitions) is None  # enabled
        assert who_paused("weekly-all", store=catalog.definitions) is None  # disabled before 0016: not known
        assert pause_schedule("nightly-gold", store=catalog.definitions, paused_by=paused_by_run(run_id))
        assert who_paused("nightly-gold", store=catalog.definitions) == f"notifier: run {run_id}"
    finally:
        catalog.close()
    paused = objects(engine)

    downgrade(engine, "0015")
    assert current_revision(engine) == "0015"
    assert objects(engine) == paused
    with engine.connect() as connection:
        assert "schedule_paused_by" not in {c["name"] for c in sa.inspect(connection).get_columns("catalog_objects")}
    upgrade(engine)
    assert current_revision(engine) != "0015"
