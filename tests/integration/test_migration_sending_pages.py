"""Migration 0027 (the page a run, or a split run's range, is sending beyond its checkpoint:
``extraction_checkpoints.sending``, ``extraction_ranges.sending``) on SQLite and PostgreSQL, on checkpoints and ranges
with rows: they are intact and record no page (an older release's run resumes by page size as before), a page
written ahead since reads back, and a downgrade drops the columns and keeps the rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.database import CatalogDatabase
from shared.catalog.engine import make_engine
from shared.catalog.extraction_store import SqlExtractionStore
from shared.catalog.schema import current_revision, downgrade, upgrade
from shared.domain.checkpoints import SendingPage

pytestmark = pytest.mark.integration

CHECKPOINTS = "run_id, definition, last_key, next_batch_index, members, completed"
RANGES = "run_id, range_index, last_key, next_batch_index, members, state"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as connection:
        checkpoints = connection.execute(sa.text(f"SELECT {CHECKPOINTS} FROM extraction_checkpoints ORDER BY run_id"))
        ranges = connection.execute(sa.text(f"SELECT {RANGES} FROM extraction_ranges ORDER BY run_id, range_index"))
        return [tuple(r) for r in checkpoints.all()], [tuple(r) for r in ranges.all()]


def test_0027_keeps_the_checkpoints_and_ranges_and_records_the_page_being_sent_since(engine: Engine):
    upgrade(engine, "0026")
    going, split = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for run_id, last_key in [(going, "40"), (split, None)]:
            connection.execute(
                sa.text(
                    "INSERT INTO extraction_checkpoints (run_id, definition, last_key, next_batch_index, members, "
                    "completed, updated_at) VALUES (:run_id, 'nightly', :last_key, 20, 40, false, :at)"
                ),
                {"run_id": str(run_id), "last_key": last_key, "at": at},
            )
        connection.execute(
            sa.text(
                "INSERT INTO extraction_ranges (run_id, range_index, lower, upper, first_batch_index, end_batch_index, "
                "last_key, next_batch_index, members, state, updated_at) "
                "VALUES (:run_id, 0, NULL, '100', 0, 1000, '60', 30, 60, 'extracting', :at)"
            ),
            {"run_id": str(split), "at": at},
        )
    before = _rows(engine)

    upgrade(engine, "0027")

    assert _rows(engine) == before
    store = SqlExtractionStore(CatalogDatabase(engine))
    checkpoint = store.claim_extraction(going, "nightly")
    [range_checkpoint] = store.run_ranges(split)
    assert (checkpoint.last_key, checkpoint.next_batch_index, checkpoint.sending) == (40, 20, None)
    assert (range_checkpoint.last_key, range_checkpoint.sending) == (60, None)
    store.save_checkpoint(replace(checkpoint, sending=SendingPage(48, 24)))
    store.save_range(replace(range_checkpoint, sending=SendingPage(68, 34)))
    assert store.claim_extraction(going, "nightly").sending == SendingPage(48, 24)
    assert store.run_ranges(split)[0].sending == SendingPage(68, 34)

    downgrade(engine, "0026")

    assert current_revision(engine) == "0026"
    assert _rows(engine) == before
