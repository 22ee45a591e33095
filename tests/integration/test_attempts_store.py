"""The attempts table on SQLite and PostgreSQL: migration 0010 on a catalog with data, the cap per pair and
outcome, the retention, the readers' filters, and rows kept under their definition's id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.application.actors import Actor, Role
from shared.application.attempts import read_attempts
from shared.application.errors import Forbidden
from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.domain.attempts import CapturedAttempt
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
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


def define(catalog: CatalogStores, *names: str, unit: str | None = None) -> list[uuid.UUID]:
    """Export definitions of these names (and what they need); their ids."""
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    catalog.definitions.apply(ConnectionProfile.model_validate({"name": "p", "base_url": "https://p.example"}))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/v1/members"))
    ids = []
    for name in names:
        catalog.definitions.apply(ExportDefinition(name=name, business_unit=unit, query="q", template="t"))
        ids.append(catalog.definitions.get_versioned(ExportDefinition, name)[0])
    return ids


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_0010_adds_the_attempts_table_to_a_catalog_with_data_and_takes_it_away_again(engine: Engine, database_url: str):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0009")
    upgrade(engine, "0010")
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    try:
        assert catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY)) is not None, "the runs recorded before are intact"
        [d] = define(catalog, "d")
        catalog.attempts.add([attempt(1)], keep=5)
        assert [a.batch_index for a in catalog.attempts.attempts(d)] == [1]
    finally:
        catalog.close()
    downgrade(engine, "0009")
    assert current_revision(engine) == "0009"
    assert "attempts" not in sa.inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() > 0


def test_the_newest_attempts_per_definition_and_profile_are_kept_and_old_ones_forgotten(catalog: CatalogStores):
    d, e = define(catalog, "d", "e")
    store = catalog.attempts
    assert store.add([attempt(n) for n in range(1, 5)] + [attempt(9, profile="q")], keep=3) == 1
    assert store.add([attempt(5, status=503)], keep=3) == 0, "a failure is not capped with the successes"
    assert store.add([attempt(6)], keep=3) == 1
    assert [a.batch_index for a in store.attempts(d, profile="p")] == [6, 5, 4, 3]
    assert [a.batch_index for a in store.attempts(d, profile="q")] == [9], "another profile keeps its own"
    assert [a.batch_index for a in store.attempts(d)] == [6, 5, 9, 4, 3]
    assert [a.batch_index for a in store.attempts(d, failed=True)] == [5]
    assert [a.batch_index for a in store.attempts(d, failed=False, limit=2)] == [6, 9]
    assert [a.batch_index for a in store.attempts(d, status=503)] == [5]
    assert store.attempts(d, run_id=uuid.uuid4()) == []
    assert store.attempts(e) == []
    kept = store.attempts(d, status=503)[0]
    assert (kept.run_id, kept.request_headers, kept.latency_ms) == (RUN, {"Authorization": "***"}, 12.5)
    assert (kept.definition_id, kept.at.utcoffset()) == (d, timedelta(0))

    old = datetime.now(UTC) - timedelta(hours=100)
    store.add([attempt(7, definition="e", at=old)], keep=3)
    assert store.prune(datetime.now(UTC) - timedelta(hours=72)) == 1
    assert store.attempts(e) == []
    assert len(store.attempts(d)) == 5


def test_thousands_of_successes_never_push_the_failures_out(catalog: CatalogStores):
    [d] = define(catalog, "d")
    catalog.attempts.add([attempt(n, status=503) for n in range(5)], keep=50)
    catalog.attempts.add([attempt(n) for n in range(5, 3005)], keep=50)  # one flush interval's successes
    assert [a.batch_index for a in catalog.attempts.attempts(d, failed=True)] == [4, 3, 2, 1, 0]
    assert len(catalog.attempts.attempts(d, failed=False, limit=1_000)) == 50


def test_a_definition_recreated_elsewhere_never_shows_its_namesakes_attempts(catalog: CatalogStores):
    [old] = define(catalog, "d", unit="france")
    catalog.attempts.add([attempt(1)], keep=5)
    catalog.definitions.delete(ExportDefinition, "d")
    [new] = define(catalog, "d", unit="emea")
    assert new != old
    emea = Actor(name="emea-operator", role=Role.OPERATOR, business_units=frozenset({"emea"}))
    shown = read_attempts(emea, "d", store=catalog.definitions, attempts=catalog.attempts)
    assert shown == [], "the deleted france definition's requests are not the new one's"
    catalog.attempts.add([attempt(2)], keep=5)
    assert [a.batch_index for a in read_attempts(emea, "d", store=catalog.definitions, attempts=catalog.attempts)] == [
        2
    ]
    viewer = Actor(name="emea-viewer", role=Role.VIEWER, business_units=frozenset({"emea"}))
    with pytest.raises(Forbidden, match="dry_run"):
        read_attempts(viewer, "d", store=catalog.definitions, attempts=catalog.attempts)
