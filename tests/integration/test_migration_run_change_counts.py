"""Migration 0008 (change counts and retries on run records) on SQLite and PostgreSQL, on a catalog with data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.events import ChangeCounts, ExtractionCompleted, RunStarted, Trigger
from tests.integration.test_migrations import RUN_NIGHTLY, fill_baseline

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_runs_before_0008_have_no_change_counts_and_new_runs_record_theirs(engine: Engine, database_url: str):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0007")
    with engine.connect() as connection:
        before = connection.execute(sa.text("SELECT run_id, delivered FROM runs ORDER BY run_id")).all()
    upgrade(engine, "0008")
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    try:
        old = catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY))
        assert old is not None
        assert (old.added, old.changed, old.unchanged, old.removed, old.retried) == (None, None, None, None, 0)
        run_id = uuid.uuid4()
        catalog.runs.fold_run_event(RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.MANUAL))
        changes = ChangeCounts(added=50, changed=100, unchanged=820, removed=30)
        catalog.runs.fold_run_event(
            ExtractionCompleted(
                run_id=run_id, definition="nightly", members=190, batches=4, changes=changes, retries=10
            )
        )
        new = catalog.runs.get_run(run_id)
        assert new is not None
        assert (new.added, new.changed, new.unchanged, new.removed, new.retried) == (50, 100, 820, 30, 10)
    finally:
        catalog.close()

    downgrade(engine, "0007")
    assert current_revision(engine) == "0007"
    with engine.connect() as connection:
        after = connection.execute(sa.text("SELECT run_id, delivered FROM runs ORDER BY run_id")).all()
    assert set(before) <= set(after)
