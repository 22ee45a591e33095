"""A group join kafka-python finishes between two polls is taken by the consumer loop: the consumer does not sit
outside its group, consuming nothing (:mod:`shared.kafka.group_rejoin`)."""

import time
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from devtools.processes import wait_until
from shared.kafka import ConsumerLoop, Outgoing, make_consumer, make_producer
from shared.kafka.group_rejoin import lost_rejoin
from shared.settings import CommonSettings
from tests.kafka_helpers import create_topic

pytestmark = pytest.mark.integration


def test_a_rejoin_finished_between_two_polls_is_taken_and_the_new_partition_consumed(settings: CommonSettings):
    bootstrap = settings.kafka_bootstrap_servers
    topic = f"{settings.topic_prefix}rejoin"
    create_topic(bootstrap, topic, partitions=1)
    # Metadata read often: the leader sees the partitions added below within half a second, and rejoins.
    consumer = make_consumer(settings, f"{settings.topic_prefix}rejoin-group", [topic], metadata_max_age_ms=500)
    handled: list[bytes] = []

    def handler(value: bytes) -> list[Outgoing]:
        handled.append(value)
        return []

    loop: ConsumerLoop[bytes] = ConsumerLoop(
        service="test-rejoin",
        consumer=consumer,
        producer=make_producer(settings, "test-rejoin"),
        decode=lambda value, _headers, _position: value,
        handler=handler,
        dead_letter_topic=settings.topics.dead_letters,
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-rejoin")
    try:
        wait_until(lambda: bool(loop.poll_once() or consumer.assignment()), timeout=60, what="the consumer joined")
        admin.create_partitions({topic: NewPartitions(total_count=2)})

        def polled_without_waiting() -> bool:
            # Polls whose timeout ends before the join does, the round between them taking a while (a loaded
            # machine, a short poll): the leader's rejoin for the new partition finishes between two of them.
            consumer.poll(timeout_ms=0)
            time.sleep(0.2)  # the round's work, not a wait for a condition
            return lost_rejoin(consumer)

        wait_until(polled_without_waiting, timeout=60, interval=0, what="a rejoin finished between two polls")
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            producer.send(topic, value=b"on the new partition", partition=1).get(timeout=30)
        finally:
            producer.close()

        def consumed() -> Any:
            loop.poll_once()
            return handled

        # Left as kafka-python leaves it, the consumer stays "rebalancing" for good: the broker drops it and the
        # record is never consumed.
        wait_until(consumed, timeout=60, interval=0, what="the record on the new partition consumed")
        assert handled == [b"on the new partition"]
        assert {partition.partition for partition in consumer.assignment()} == {0, 1}
    finally:
        admin.close()
        consumer.close()
        loop.producer.close()
