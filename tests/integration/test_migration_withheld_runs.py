"""Migration 0026 (the run that held a withheld run off, ``extraction_checkpoints.withheld_for``) on SQLite and
PostgreSQL, on checkpoints with rows: they are intact (null: not withheld, or withheld by an older release), a run
withheld since says by which run, and a downgrade drops the column and keeps the rows (a withheld run stays done)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.database import CatalogDatabase
from shared.catalog.engine import make_engine
from shared.catalog.extraction_store import SqlExtractionStore, withheld_runs, withhold_start
from shared.catalog.schema import current_revision, downgrade, upgrade

pytestmark = pytest.mark.integration

COLUMNS = "run_id, definition, next_batch_index, members, completed"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_0026_keeps_the_checkpoints_and_a_run_withheld_since_says_by_which_run(engine: Engine):
    upgrade(engine, "0025")
    extracted, going, withheld_before = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for run_id, members, completed in [(extracted, 3, True), (going, 1, False), (withheld_before, 0, True)]:
            connection.execute(
                sa.text(
                    "INSERT INTO extraction_checkpoints (run_id, definition, next_batch_index, members, completed, "
                    "updated_at) VALUES (:run_id, 'nightly', :members, :members, :completed, :at)"
                ),
                {"run_id": str(run_id), "members": members, "completed": completed, "at": at},
            )
        before = connection.execute(sa.text(f"SELECT {COLUMNS} FROM extraction_checkpoints ORDER BY run_id")).all()

    upgrade(engine, "0026")

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT {COLUMNS}, withheld_for FROM extraction_checkpoints ORDER BY run_id")
        ).all()
    assert [tuple(row[:-1]) for row in rows] == [tuple(row) for row in before]
    assert [row[-1] for row in rows] == [None, None, None]
    # Today's stores read today's columns (0027 added `sending`): the rest of the test runs on this release's head.
    upgrade(engine)
    database = CatalogDatabase(engine)
    held, holder = uuid.uuid4(), uuid.uuid4()
    assert withhold_start(database, held, "nightly", holder)
    assert withhold_start(database, withheld_before, "nightly", holder), "withheld before: it never starts either"
    assert not withhold_start(database, going, "nightly", holder), "claimed by an extractor first"
    assert withheld_runs(database, [extracted, going, withheld_before, held]) == {held: holder}
    store = SqlExtractionStore(database)
    assert store.claim_extraction(held, "nightly").withheld_for == holder
    assert store.claim_extraction(extracted, "nightly").withheld_for is None

    downgrade(engine, "0025")

    assert current_revision(engine) == "0025"
    assert "withheld_for" not in {c["name"] for c in sa.inspect(engine).get_columns("extraction_checkpoints")}
    with engine.connect() as connection:
        done = connection.execute(sa.text("SELECT run_id, completed FROM extraction_checkpoints")).all()
    assert {uuid.UUID(run_id): bool(completed) for run_id, completed in done} == {
        extracted: True,
        going: False,
        withheld_before: True,
        held: True,
    }
