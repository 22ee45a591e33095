"""Two rounds in flight on a real broker: an outage met by a round while the next is in flight hands both back
(the same partition), and every record's outcome is produced once, in order, with nothing dead-lettered."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from devtools.processes import wait_until
from shared.events import RunRequested
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.outages import DependencyUnavailable
from shared.settings import CommonSettings
from tests.kafka_helpers import produce, read_to_end, read_until

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0


def test_an_outage_while_the_next_round_is_in_flight_hands_both_back_and_loses_nothing(settings: CommonSettings):
    ensure_topics(settings)
    topics = settings.topics
    names = [f"d{i}" for i in range(6)]
    # One key: one partition, so the rounds are d0-d1, d2-d3, d4-d5 and the outcomes' order is the records'.
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("one-key", RunRequested(definition=name).to_bytes()) for name in names],
    )
    next_round = threading.Event()
    catalog_away = True
    handled: list[str] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        nonlocal catalog_away
        handled.extend(request.definition for request in requests)
        if any(request.definition == "d2" for request in requests):
            next_round.set()
        results: list[list[Outgoing] | BaseException] = []
        for request in requests:
            if request.definition == "d1" and catalog_away:
                # d1 meets the outage once the round after it is in flight.
                assert next_round.wait(DEADLINE_SECONDS), "the next round was not polled while this one was in flight"
                catalog_away = False
                results.append(DependencyUnavailable("the catalog is unreachable"))
                continue
            value = request.definition.encode()
            results.append([Outgoing(topics.run_events, "one-key", value)])  # one partition: in order
        return results

    service = f"rounds-{uuid.uuid4().hex[:6]}"
    loop: ConsumerLoop[RunRequested] = ConsumerLoop(
        service=service,
        consumer=make_consumer(settings, f"{settings.topic_prefix}{service}", [topics.run_requests]),
        producer=make_producer(settings, service),
        decode=value_decoder(RunRequested.model_validate_json),
        dead_letter_topic=topics.dead_letters,
        handle_round=handle_round,
        rounds_in_flight=2,
    )
    loop.poll_records = lambda: 2
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    try:
        outcomes = read_until(settings.kafka_bootstrap_servers, topics.run_events, lambda values: len(values) >= 6)
        wait_until(
            lambda: _committed(settings, f"{settings.topic_prefix}{service}", topics.run_requests) == 6,
            timeout=DEADLINE_SECONDS,
            interval=0.05,
            what="every record committed",
        )
    finally:
        loop.stopping.set()
        thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()
    # Each outcome once, in order: d0 settled before the outage; d1 and the next round's records read again.
    assert [value.decode() for value in read_to_end(settings.kafka_bootstrap_servers, topics.run_events)] == names
    assert [value.decode() for value in outcomes] == names
    assert handled.count("d0") == 1, handled
    assert handled.count("d1") == 2, handled
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def _committed(settings: CommonSettings, group: str, topic: str) -> int:
    """The group's committed offsets on ``topic``, summed, read by a consumer of its own that does not join the
    group (the loop's consumer belongs to the loop's thread)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return sum(consumer.committed(partition) or 0 for partition in partitions)
    finally:
        consumer.close()
