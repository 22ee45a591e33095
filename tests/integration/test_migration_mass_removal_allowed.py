"""Migration 0013 (a mass removal allowed, on the run records) on SQLite and PostgreSQL, on a catalog with data: the
runs before it say none was allowed, a new run allowed one says so, a downgrade keeps the runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.events import RunStarted, Trigger
from tests.integration.test_migrations import RUN_NIGHTLY, fill_baseline

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_runs_before_0013_were_allowed_no_mass_removal_and_a_new_run_records_its_allowance(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0012")
    with engine.connect() as connection:
        before = connection.execute(sa.text("SELECT run_id, status, delivered FROM runs ORDER BY run_id")).all()
    upgrade(engine, "0013")
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    try:
        old = catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY))
        assert old is not None
        assert old.mass_removal_allowed is False
        allowed, plain = uuid.uuid4(), uuid.uuid4()
        for run_id, allow in ((allowed, True), (plain, False)):
            started = RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.MANUAL, allow_mass_removal=allow)
            catalog.runs.fold_run_event(started)
        records = {run_id: catalog.runs.get_run(run_id) for run_id in (allowed, plain)}
        assert {run_id: r.mass_removal_allowed for run_id, r in records.items() if r} == {allowed: True, plain: False}
    finally:
        catalog.close()

    downgrade(engine, "0012")
    assert current_revision(engine) == "0012"
    with engine.connect() as connection:
        after = connection.execute(sa.text("SELECT run_id, status, delivered FROM runs ORDER BY run_id")).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("runs")}
    assert set(before) <= set(after)
    assert len(after) == len(before) + 2
    assert "mass_removal_allowed" not in columns
