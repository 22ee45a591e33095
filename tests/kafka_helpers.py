"""Small helpers for tests that read and write real Kafka topics."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


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
    """Read ``topic`` from the beginning until ``done(values)`` holds; fail with what was read by then.

    Partitions are assigned by hand (no consumer group), so no group rebalance can stall the read.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: no partitions known within {timeout}s")
            consumer.poll(timeout_ms=100)
            partitions = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        while not done(values):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met within {timeout}s; read {len(values)} records")
            for records in consumer.poll(timeout_ms=250).values():
                values.extend(record.value for record in records)
    finally:
        consumer.close()
    return values


def service_env(bootstrap: str, topic_prefix: str, catalog_url: str, query_store_url: str) -> dict[str, str]:
    """The environment of service processes in a test: its broker, topics, catalog and member store."""
    return {
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EXPORT_TOPIC_PREFIX": topic_prefix,
        "EXPORT_TOPIC_PARTITIONS": "3",
        "EXPORT_CATALOG_URL": catalog_url,
        "EXPORT_QUERY_STORE_URL": query_store_url,
        "EXPORT_METRICS_PORT": "0",
    }
