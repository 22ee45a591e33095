"""Small helpers for tests that read and write real Kafka topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key.encode(), value=value).get(timeout=30)
    finally:
        producer.close()


def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[bytes]], bool],
    *,
    timeout: float = 60.0,
) -> list[bytes]:
    """Read ``topic`` from the beginning until ``done(values)`` holds; fail with what was read by then."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(values):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met within {timeout}s; read {len(values)} records")
            for records in consumer.poll(timeout_ms=250).values():
                values.extend(record.value for record in records)
    finally:
        consumer.close()
    return values
