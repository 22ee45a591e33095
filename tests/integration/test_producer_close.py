"""A producer closed as its service stops (close_producer) ends within its bound, on a real broker.

Records the broker has acknowledged by then are delivered; records a frozen broker (SIGSTOP: it holds its
connections and answers nothing) has not acknowledged are failed to their senders at the bound, not at the delivery
timeout (120 s), and counted. kafka-python's own ``close(timeout)`` raised ``KafkaTimeoutError`` from its flush then
and left the producer open, its senders waiting.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka.errors import IllegalStateError

from devtools.kafka_broker import LocalKafka
from shared.kafka import ensure_topics, make_producer
from shared.kafka.clients import close_producer
from shared.settings import CommonSettings
from tests.kafka_helpers import read_to_end

pytestmark = pytest.mark.integration


def test_a_producer_closing_while_its_broker_is_frozen_fails_what_it_holds_at_its_bound(freezable_broker: LocalKafka):
    broker = freezable_broker
    settings = CommonSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", metrics_port=0
    )
    topic = settings.topics.run_requests
    ensure_topics(settings, [topic])
    delivered = make_producer(settings, "close-test")
    delivered.send(topic, key=b"k", value=b"acknowledged").get(timeout=60)
    delivered.send(topic, key=b"k", value=b"flushed at close")
    assert close_producer(delivered, 5) == 0  # nothing failed: what it held was acknowledged in time
    assert read_to_end(broker.bootstrap_servers, topic) == [b"acknowledged", b"flushed at close"]

    held = make_producer(settings, "close-test")
    held.send(topic, key=b"k", value=b"acknowledged").get(timeout=60)  # the partition's leader known
    broker.pause()
    try:
        waiting = [held.send(topic, key=b"k", value=f"held {n}".encode()) for n in range(3)]
        started = time.monotonic()
        failed = close_producer(held, 2)
        took = time.monotonic() - started
    finally:
        broker.resume()
    assert failed == 3
    assert took < 2 + 1  # its bound, and the I/O thread's end (before: the delivery timeout, 120 s)
    for future in waiting:
        assert future.is_done
        with pytest.raises(IllegalStateError):
            future.get(timeout=0)
