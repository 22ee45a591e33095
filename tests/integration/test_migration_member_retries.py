"""Migration 0012 (next-run retries of refused members, member delivery log) on SQLite and PostgreSQL, on a
catalog with data: the runs before it are intact, new outcomes fill the new tables, a downgrade drops them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.domain.member_retries import RetryState
from shared.events import BatchOutcome, RefusedMember, RunStarted, Trigger
from tests.integration.test_migrations import RUN_NIGHTLY, fill_baseline
from tests.member_state_helpers import member_state_definition

pytestmark = pytest.mark.integration

NEW_TABLES = {"member_retries", "run_retries", "run_retry_claims", "delivery_batches"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_0012_keeps_the_runs_before_it_and_records_the_members_of_new_outcomes(engine: Engine, database_url: str):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0011")
    with engine.connect() as connection:
        before = connection.execute(sa.text("SELECT run_id, delivered, failed FROM runs ORDER BY run_id")).all()
    upgrade(engine, "0012")
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    catalog.runs.followers.extend([catalog.retries, catalog.deliveries])
    try:
        assert catalog.runs.get_run(uuid.UUID(RUN_NIGHTLY)) is not None
        nightly = member_state_definition(catalog, "nightly")  # per-member state is keyed by its id
        run_id = uuid.uuid4()
        catalog.runs.fold_run_event(RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.MANUAL))
        refused = RefusedMember(key="2", status=503, reason="HTTP 503", attempts=2)
        outcome = BatchOutcome(
            run_id=run_id,
            definition="nightly",
            batch_index=0,
            delivered=2,
            failed=1,
            member_keys=["1", "2", "3"],
            refused=[refused],
        )
        catalog.runs.fold_run_event(outcome)
        last = catalog.deliveries.last_delivery(nightly, "2")
        assert last is not None
        assert (last.delivered, last.status, last.run_id) == (False, 503, str(run_id))
        delivered = catalog.deliveries.last_delivery(nightly, "3")
        assert delivered is not None
        assert delivered.delivered
        assert catalog.retries.states(nightly, ["2"])["2"].state is RetryState.PENDING
    finally:
        catalog.close()

    downgrade(engine, "0011")
    assert current_revision(engine) == "0011"
    assert NEW_TABLES.isdisjoint(sa.inspect(engine).get_table_names())
    with engine.connect() as connection:
        after = connection.execute(sa.text("SELECT run_id, delivered, failed FROM runs ORDER BY run_id")).all()
    assert set(before) <= set(after)
