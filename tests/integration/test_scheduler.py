"""The scheduler on real Kafka, its state in SQLite and in a real PostgreSQL, time driven by the test."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.clock import ManualClock
from services.scheduler.schedule_math import scheduled_run_id
from services.scheduler.scheduling import Scheduler
from shared.catalog import Catalog
from shared.domain.catalog_objects import ExportDefinition
from shared.events import RunRequested, Trigger
from shared.kafka import ensure_topics, make_producer, produce_and_wait
from shared.settings import CommonSettings
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # the night Paris moves to summer time


@pytest.fixture
def scheduler(settings: CommonSettings, catalog: Catalog) -> Iterator[Scheduler]:
    ensure_topics(settings, [settings.topics.run_requests])
    producer = make_producer(settings, "test-scheduler")
    yield Scheduler(
        catalog=catalog,
        clock=ManualClock(START),
        topics=settings.topics,
        publish=lambda out: produce_and_wait(producer, out),
    )
    producer.close()


def test_a_schedule_fires_once_per_due_instant_with_deterministic_ids(
    scheduler: Scheduler, catalog: Catalog, settings: CommonSettings
):
    catalog.apply(
        ExportDefinition(
            name="nightly",
            query="q",
            template="t",
            schedule={"enabled": True, "cron": "30 3 * * *", "timezone": "Europe/Paris"},
        )
    )
    catalog.apply(
        ExportDefinition(name="paused", query="q", template="t", schedule={"enabled": False, "cron": "* * * * *"})
    )
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    assert scheduler.tick() == []  # first sight: nothing in the past fires
    fired: list[RunRequested] = []
    for _ in range(3 * 24 * 4):  # three days in 15-minute steps
        clock.advance(timedelta(minutes=15))
        fired += scheduler.tick()
    definition_id, _ = catalog.get_with_id(ExportDefinition, "nightly")
    expected = [
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 1, 30, tzinfo=UTC),
    ]  # 03:30 Paris summer time is 01:30 UTC
    assert [r.scheduled_for for r in fired] == expected
    assert [r.run_id for r in fired] == [scheduled_run_id(definition_id, due) for due in expected]
    assert {r.trigger for r in fired} == {Trigger.SCHEDULE}
    published = [
        RunRequested.model_validate_json(v)
        for v in read_until(settings.kafka_bootstrap_servers, settings.topics.run_requests, lambda vs: len(vs) >= 3)
    ]
    assert sorted(str(p.run_id) for p in published) == sorted(str(r.run_id) for r in fired)


def test_a_second_replica_on_the_same_catalog_does_not_fire_again(scheduler: Scheduler, catalog: Catalog):
    catalog.apply(
        ExportDefinition(name="hourly", query="q", template="t", schedule={"enabled": True, "cron": "0 * * * *"})
    )
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    scheduler.tick()
    replica = Scheduler(catalog=catalog, clock=clock, topics=scheduler.topics, publish=scheduler.publish)
    clock.advance(timedelta(hours=1))
    first = scheduler.tick()
    second = replica.tick()
    assert len(first) == 1
    assert second == []
