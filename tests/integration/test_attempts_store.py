"""The attempts table on SQLite and PostgreSQL: migration 0010 on a catalog with data, the per-pair cap, the
retention, and the readers' filters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.domain.attempts import CapturedAttempt
from tests.integration.test_migrations import RUN_NIGHTLY, fill_baseline

pytestmark = pytest.mark.integration

RUN = uuid.uuid4()


def attempt(n: int, *, definition: str = "d", profile: str = "p", status: int = 200, at: datetime | None = None):
    return CapturedAttempt(
        definition=definition,
        profile=profile,
        run_id=RUN,
        batch_index=n,
        attempt=1,
        at=at or datetime.now(UTC),
        method="POST",
        url="https://p.example/v1/members?api_key=***",
        request_headers={"Authorization": "***"},
        request_body=f'[{{"id": {n}}}]',
        request_bytes=11,
        status=status,
        success=status < 300,
        latency_ms=12.5,
        response_headers={"Content-Type": "application/json"},
        response_body='{"ok": true}',
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_0010_adds_the_attempts_table_to_a_catalog_with_data_and_takes_it_away_again(engine: Engine, database_url: str):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0008")
    upgrade(engine, "0010")
    catalog = CatalogStores.from_url(database_url)
    try:
        assert catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY)) is not None, "the runs recorded before are intact"
        catalog.attempts.add([attempt(1)], keep=5)
        assert [a.batch_index for a in catalog.attempts.attempts("d")] == [1]
    finally:
        catalog.close()
    downgrade(engine, "0008")
    assert current_revision(engine) == "0008"
    assert "attempts" not in sa.inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() > 0


def test_the_newest_attempts_per_definition_and_profile_are_kept_and_old_ones_forgotten(catalog: CatalogStores):
    store = catalog.attempts
    assert store.add([attempt(n) for n in range(1, 5)] + [attempt(9, profile="q")], keep=3) == 1
    assert store.add([attempt(5, status=503)], keep=3) == 1
    assert [a.batch_index for a in store.attempts("d", profile="p")] == [5, 4, 3]
    assert [a.batch_index for a in store.attempts("d", profile="q")] == [9], "another profile keeps its own"
    assert [a.batch_index for a in store.attempts("d")] == [5, 9, 4, 3]
    assert [a.batch_index for a in store.attempts("d", failed=True)] == [5]
    assert [a.batch_index for a in store.attempts("d", failed=False, limit=2)] == [9, 4]
    assert [a.batch_index for a in store.attempts("d", status=503)] == [5]
    assert store.attempts("d", run_id=uuid.uuid4()) == []
    assert store.attempts("other") == []
    kept = store.attempts("d", status=503)[0]
    assert (kept.run_id, kept.request_headers, kept.latency_ms) == (RUN, {"Authorization": "***"}, 12.5)
    assert kept.at.utcoffset() == timedelta(0)

    old = datetime.now(UTC) - timedelta(hours=100)
    store.add([attempt(7, definition="e", at=old)], keep=3)
    assert store.prune(datetime.now(UTC) - timedelta(hours=72)) == 1
    assert store.attempts("e") == []
    assert len(store.attempts("d")) == 4
