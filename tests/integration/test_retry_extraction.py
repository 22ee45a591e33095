"""The extractor's retries of members refused by earlier runs, on SQLite and PostgreSQL member stores with real
Kafka: members the run's own pages carry are sent once and counted, the others are read by key with their
current values and published as retry batches after the run's own, a key the query no longer returns is
resolved as gone, and a crash before the run's completion repeats the same retry batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from services.extractor.extraction import Extractor
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.member_retries import RetryState
from shared.events import BatchOutcome, ExtractionCompleted, MemberBatch, RefusedMember, RunRequested
from shared.settings import CommonSettings
from tests.integration.test_extractor import (  # noqa: F401 - the extractor's fixtures and helpers
    MEMBERS,
    _members,
    _run_events,
    _succeed,
    extractor,
    extractor_stores,
)
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration


def _refused_earlier(catalog: CatalogStores, definition: str, keys: list[str]) -> None:
    """An earlier run's outcome refusing ``keys`` with 503, folded by the retries follower."""
    refused = [RefusedMember(key=key, status=503, reason="HTTP 503", attempts=2) for key in keys]
    outcome = BatchOutcome(
        run_id=uuid.uuid4(),
        definition=definition,
        batch_index=0,
        delivered=0,
        failed=len(keys),
        member_keys=keys,
        refused=refused,
    )
    with catalog.database.transaction() as session:
        catalog.retries.follow(session, [outcome])


def test_an_incremental_run_sends_the_retries_its_window_lacks_by_key_once_across_a_crash(
    extractor: Extractor,  # noqa: F811
    settings: CommonSettings,
    database_url: str,
    extractor_stores: CatalogStores,  # noqa: F811
):
    catalog = extractor_stores
    extractor.retries = catalog.retries
    first = RunRequested(definition="export-changed")
    extractor.handle(first)
    assert len(_members(settings, MEMBERS)) == MEMBERS
    _succeed(catalog, first.run_id, batches=33, members=MEMBERS)
    _refused_earlier(catalog, "export-changed", ["7", "70", "700", "999999"])
    engine = make_engine(database_url)
    with engine.begin() as connection:  # 70 moves into the next window: the run's own pages carry it
        connection.execute(
            text("UPDATE members SET updated_at = :later WHERE id = 70"), {"later": datetime(2030, 1, 1, tzinfo=UTC)}
        )
    engine.dispose()

    second = RunRequested(definition="export-changed")
    saved = catalog.extraction.save_checkpoint
    crashes: list[object] = []

    def crash_before_completed(checkpoint):
        if checkpoint.completed and not crashes:
            crashes.append(checkpoint)
            raise RuntimeError("the extractor dies before its checkpoint says completed")
        saved(checkpoint)

    catalog.extraction.save_checkpoint = crash_before_completed  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        extractor.handle(second)
    catalog.extraction.save_checkpoint = saved  # type: ignore[method-assign]
    _refused_earlier(catalog, "export-changed", ["5"])  # refused after the run started: not this run's
    extractor.handle(second)  # the request redelivered

    batches = [
        MemberBatch.model_validate_json(v)
        for v in read_until(
            settings.kafka_bootstrap_servers, settings.topics.member_batches, lambda vs: len(vs) >= 33 + 3
        )
    ]
    of_second = {b.batch_index: b for b in batches if b.run_id == second.run_id}
    assert [m["id"] for m in of_second[0].members] == [70]
    assert of_second[0].retry is False
    retried = [b for b in of_second.values() if b.retry]
    assert [m["id"] for b in retried for m in b.members] == [7, 700]
    assert [b.batch_index for b in retried] == [1]  # after the run's own, the same index after the crash
    assert set(retried[0].members[0]) == {"id", "updated_at"}  # the member's current values
    completed = [
        e for e in _run_events(settings, 6) if isinstance(e, ExtractionCompleted) and e.run_id == second.run_id
    ]
    # Said twice (the crash came after it was published), the same each time: 70 carried, 7 and 700 re-sent.
    assert {(e.members, e.batches, e.retries) for e in completed} == {(3, 2, 3)}
    definition_id, _, _ = catalog.definitions.get_versioned(ExportDefinition, "export-changed")
    states = catalog.retries.states(str(definition_id), ["7", "70", "700", "999999", "5"])
    assert states["999999"].state is RetryState.GONE
    assert states["5"].state is RetryState.PENDING  # for the next run
