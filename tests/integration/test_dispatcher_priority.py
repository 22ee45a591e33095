"""High-priority batches go ahead of a normal backlog (real Kafka, a real HTTP receiver)."""

from __future__ import annotations

import time
import uuid

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, Priority, SavedQuery
from shared.events import MemberBatch
from shared.kafka import ConsumerLoop, ensure_topics, make_consumer, make_producer, value_decoder
from shared.settings import CommonSettings
from tests.dispatcher_helpers import blocking_dispatcher, http_on_loop
from tests.kafka_helpers import produce

pytestmark = pytest.mark.integration

BACKLOG = 100
URGENT = 30


def _batches(priority: Priority, count: int) -> list[MemberBatch]:
    run_id = uuid.uuid4()
    return [
        MemberBatch(run_id=run_id, definition="d", template="t", priority=priority, batch_index=i, members=[{"id": i}])
        for i in range(count)
    ]


@pytest.mark.parametrize("prioritised", [True, False])
def test_high_priority_batches_overtake_a_normal_backlog(settings: CommonSettings, tmp_path, prioritised: bool):
    topics = settings.topics
    ensure_topics(settings)
    backlog, urgent = _batches(Priority.NORMAL, BACKLOG), _batches(Priority.HIGH, URGENT)
    produce(settings.kafka_bootstrap_servers, topics.member_batches, [(b.identity, b.to_bytes()) for b in backlog])
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    with HttpReceiver() as receiver, http_on_loop() as http:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        dispatcher = blocking_dispatcher(catalog, http, RetryBudget(), topics, cache_seconds=60)
        loop = ConsumerLoop(
            service="dispatcher-test",
            consumer=make_consumer(
                settings,
                settings.topic_prefix + "dispatcher",
                topics.member_batch_topics(),
                max_poll_records=2,
                # Small fetches, as ~130 KB member batches make them: a fetch holds a few records.
                max_partition_fetch_bytes=1024,
            ),
            producer=make_producer(settings, "dispatcher-test"),
            decode=value_decoder(MemberBatch.model_validate_json),
            handler=dispatcher.handle,
            dead_letter_topic=topics.dead_letters,
            priority_topics=topics.member_batch_topics() if prioritised else None,
        )
        deadline = time.monotonic() + 120
        while len(receiver.receipts()) < 6:  # the backlog is being worked through...
            assert time.monotonic() < deadline
            loop.poll_once()
        urgent_topic = topics.member_batches_for("high")
        produce(settings.kafka_bootstrap_servers, urgent_topic, [(b.identity, b.to_bytes()) for b in urgent])
        while len(receiver.receipts()) < BACKLOG + len(urgent):  # ...when urgent batches arrive
            assert time.monotonic() < deadline
            loop.poll_once()
        loop.consumer.close()
        loop.producer.close()
    order = [r.headers["Idempotency-Key"] for r in receiver.receipts()]
    positions = sorted(order.index(b.identity) for b in urgent)
    # Normal batches delivered while urgent ones were waiting: the ones between the first and the last.
    overtaken_by = positions[-1] - positions[0] + 1 - URGENT
    print(f"prioritised={prioritised}: urgent at {positions[0]}..{positions[-1]}, {overtaken_by} normal in between")
    if prioritised:
        assert overtaken_by <= 6, positions  # at most the records already fetched before the pause
    else:
        assert overtaken_by > 6, positions  # the same test without priority: interleaved with the backlog
    catalog.close()
