"""Small helpers for tests that read and write real Kafka topics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from unittest.mock import patch

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key.encode(), value=value).get(timeout=30)
    finally:
        producer.close()


def produce_with_headers(
    bootstrap: str, topic: str, records: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> list[tuple[int, int]]:
    """Produce ``(key, value, headers)`` records in order; return each one's (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    try:
        placed = []
        for key, value, headers in records:
            metadata = producer.send(topic, key=key.encode(), value=value, headers=headers).get(timeout=30)
            placed.append((metadata.partition, metadata.offset))
        return placed
    finally:
        producer.close()


class _Null(bytes):
    """A header value produced as null: see :func:`produce_with_null_headers`."""


def produce_with_null_headers(
    bootstrap: str, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes | None]]
) -> None:
    """Produce one record whose ``headers`` may have null values (None), as Kafka allows and other clients send.

    kafka-python's producer takes only bytes header values (its ``send`` checks, its batch counts their lengths),
    though its record encoder writes None as a null value: such a value goes through the producer as an empty
    :class:`_Null` and is handed to the encoder as None (the encoder patched for this one record, in this thread)."""
    encode = MemoryRecordsBuilder.append

    def append(builder: MemoryRecordsBuilder, timestamp: int, key: Any, value: Any, headers: Any = None) -> Any:
        nulled = [(name, None if isinstance(v, _Null) else v) for name, v in headers or []]
        return encode(builder, timestamp, key, value, nulled)

    sent = [(name, _Null() if header_value is None else header_value) for name, header_value in headers]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        with patch.object(MemoryRecordsBuilder, "append", append):
            future = producer.send(topic, key=key.encode(), value=value, headers=sent)
        future.get(timeout=30)
    finally:
        producer.close()


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
    """Create ``topic`` with topic-level ``config`` (e.g. ``{"max.message.bytes": "2000"}``)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-create-topic")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config or {})], wait_for_metadata=True)
    finally:
        admin.close()


def _from_the_beginning(consumer: KafkaConsumer, topic: str, deadline: float, timeout: float) -> list[TopicPartition]:
    """Assign every partition of ``topic`` by hand (no group to rebalance) and seek to their beginning."""
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: no partitions known within {timeout}s")
        consumer.poll(timeout_ms=100)
        partitions = consumer.partitions_for_topic(topic)
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning()
    return assigned


def partitions_of(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[int]:
    """The partition numbers of ``topic`` (a topic the broker auto-created has its default count, not ours)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        return [p.partition for p in _from_the_beginning(consumer, topic, time.monotonic() + timeout, timeout)]
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, *, timeout: float = 60.0) -> list[bytes]:
    """Every record value of ``topic`` up to its end offsets as of now (use it once the records are acked)."""
    return [record.value for record in read_records_to_end(bootstrap, topic, timeout=timeout)]


def read_records_to_end(bootstrap: str, topic: str, *, timeout: float = 60.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` (headers included) up to its end offsets as of now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    read: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        assigned = _from_the_beginning(consumer, topic, deadline, timeout)
        ends = consumer.end_offsets(assigned)
        while any(consumer.position(p) < ends[p] for p in assigned):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its end within {timeout}s; read {len(read)} records")
            for records in consumer.poll(timeout_ms=250).values():
                read.extend(records)
    finally:
        consumer.close()
    return read


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
        _from_the_beginning(consumer, topic, deadline, timeout)
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
