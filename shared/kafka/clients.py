"""Kafka clients (kafka-python 3.x) configured for at-least-once delivery, connected as the settings say
(:func:`shared.kafka.client_config.kafka_client_config`: TLS, SASL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from shared.kafka.client_config import kafka_client_config
from shared.kafka.records import Outgoing, ProducedHeaders
from shared.settings import CommonSettings
from shared.tracing import current_kafka_headers, with_trace

#: How much longer than the producer's delivery timeout a caller waits for an acknowledgement: the producer
#: reports a record it gave up on at that timeout, so the wait never ends before the producer has decided.
ACK_WAIT_MARGIN_SECONDS = 5.0
#: How long a consumer may take between polls before the group gives its partitions away (services override).
DEFAULT_MAX_POLL_INTERVAL_MS = 600_000
#: kafka-python's own default delivery timeout.
DEFAULT_DELIVERY_TIMEOUT_MS = 120_000
#: The least a stopping service gives its producer to have the records it holds acknowledged (:func:`close_producer`).
PRODUCER_CLOSE_SECONDS = 5.0
#: Of a close's time, what is kept for the producer's I/O thread to fail what is left and end.
_SENDER_END_SECONDS = 1.0

log = structlog.get_logger(__name__)


def produce_timeout_seconds(producer: KafkaProducer) -> float:
    """How long to wait for a record's acknowledgement from ``producer``: its delivery timeout and a margin."""
    config = getattr(producer, "config", None) or {}  # a test's stand-in producer may have none
    return float(config.get("delivery_timeout_ms", DEFAULT_DELIVERY_TIMEOUT_MS)) / 1000 + ACK_WAIT_MARGIN_SECONDS


def make_producer(settings: CommonSettings, client_id: str, *, max_block_seconds: float | None = None) -> KafkaProducer:
    """A producer that waits for all in-sync replicas and does not reorder retried sends. ``send()`` blocks (for a
    topic's metadata, or room in its buffer) ``max_block_seconds`` at most, else kafka-python's 60 s, then raises
    ``KafkaTimeoutError``: a caller answering within a bound (the admin API) sets one below its bound."""
    block: dict[str, Any] = {} if max_block_seconds is None else {"max_block_ms": int(max_block_seconds * 1000)}
    return KafkaProducer(
        **block,
        **kafka_client_config(settings),
        client_id=client_id,
        acks="all",
        linger_ms=5,
        batch_size=settings.kafka_batch_bytes,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        max_in_flight_requests_per_connection=1,
        # Retries are bounded by time, not count: a broker away (restarting, a leader moving) for less than
        # the delivery timeout is waited out; past it the send fails and the caller decides (never silent).
        request_timeout_ms=settings.kafka_request_timeout_ms,
        delivery_timeout_ms=settings.kafka_delivery_timeout_ms,
        max_request_size=4 * 1024 * 1024,
        # kafka-python 3 makes a producer idempotent by default, and an idempotent producer whose record
        # the broker refuses (MessageSizeTooLargeError) fails every later send, to any topic, for good: one
        # oversized record would silence the service. Not needed here: one request in flight keeps the
        # order, and consumers deduplicate what a retried send may write twice (at least once).
        enable_idempotence=False,
    )


def close_producer(producer: KafkaProducer, timeout_seconds: float = PRODUCER_CLOSE_SECONDS) -> int:
    """Close ``producer`` within ``timeout_seconds`` (1 s at least) and about a second more; how many records it
    abandoned.

    The records it holds are given the time less a second to be acknowledged (one deadline for them all: kafka-python's
    ``flush(timeout)`` waits its timeout for each batch in turn, so it runs on a daemon thread the close stops waiting
    for at the deadline); those still not acknowledged then (a broker away or frozen) are abandoned: their senders
    waiting for them get ``IllegalStateError`` ("Producer is closed forcefully") at once instead of at the delivery
    timeout (120 s), and they are logged once, as a count. Their outcome is unknown: a broker that received one before
    it froze may still write it. kafka-python 3.0.12's own ``close(timeout)`` would not do it: its flush raises
    ``KafkaTimeoutError`` first and leaves the producer open, its I/O thread trying on and its senders waiting."""
    waited = max(0.0, timeout_seconds - _SENDER_END_SECONDS)
    flushing = threading.Thread(target=_flush_quietly, args=(producer,), name="producer-close-flush", daemon=True)
    flushing.start()
    flushing.join(waited)
    abandoned = 0
    if flushing.is_alive():
        abandoned = _records_held(producer)
        sender = getattr(producer, "_sender", None)  # kafka-python's I/O thread (private; None: nothing to force)
        if sender is not None:
            sender.force_close()  # it fails every record it holds, then ends
        log.warning(
            "Kafka records not acknowledged as the producer closed: abandoned, outcome unknown",
            records=abandoned,
            waited_seconds=round(waited, 1),
        )
    try:
        producer.close(timeout=_SENDER_END_SECONDS)
    except KafkaTimeoutError:  # the I/O thread (a daemon) did not end in time: the process ends without it
        log.warning("Kafka producer not closed within its time: left to the process's end")
    return abandoned


def _flush_quietly(producer: KafkaProducer) -> None:
    """``producer.flush()`` with no timeout, ended early by a forced close (its failure is the close's to tell)."""
    try:
        producer.flush()
    except Exception:  # noqa: BLE001 - closed meanwhile, forced: the close counts and logs what was abandoned
        return


def _records_held(producer: KafkaProducer) -> int:
    """How many records ``producer`` holds not acknowledged yet (kafka-python's private accumulator; 0 unknown)."""
    incomplete = getattr(getattr(producer, "_accumulator", None), "_incomplete", None)
    try:
        return sum(int(batch.record_count) for batch in incomplete.all()) if incomplete is not None else 0
    except (AttributeError, TypeError):
        return 0


#: The partition assignors of every group consumer: both eager (kafka-python's defaults in 3.0).
EAGER_ASSIGNORS = (RangePartitionAssignor, RoundRobinPartitionAssignor)


def make_consumer(settings: CommonSettings, group_id: str, topics: list[str], **overrides: Any) -> KafkaConsumer:
    """A consumer in ``group_id`` that never commits on its own: the loop commits after the outcome."""
    config: dict[str, Any] = {
        **kafka_client_config(settings),
        "group_id": group_id,
        "client_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": DEFAULT_MAX_POLL_INTERVAL_MS,
        # kafka-python 3 defaults to 45 s: a killed replica's partitions would wait that long.
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        # The eager protocol, said rather than left to the client's default: the loop's rebalance bookkeeping
        # (rounds in flight, held records) relies on every rebalance revoking all partitions, then assigning; an
        # incremental (cooperative) rebalance calls the listener only for what moves.
        "partition_assignment_strategy": EAGER_ASSIGNORS,
    }
    consumer = KafkaConsumer(**(config | overrides))
    consumer.subscribe(topics)
    return consumer


class InFlight:
    """Records handed to the producer; :meth:`wait` returns once the broker has acknowledged them all."""

    def __init__(self, futures: list[Any], timeout_seconds: float) -> None:
        self._futures = futures
        self._timeout_seconds = timeout_seconds

    def wait(self, timeout_seconds: float | None = None) -> None:
        """Block until every record is acknowledged; raise the first failure. With ``timeout_seconds``, wait that
        long at most in all (``KafkaTimeoutError`` then; the records may still be delivered later)."""
        if timeout_seconds is None:
            for future in self._futures:
                future.get(timeout=self._timeout_seconds)
            return
        deadline = time.monotonic() + min(timeout_seconds, self._timeout_seconds)
        for future in self._futures:
            future.get(timeout=max(0.0, deadline - time.monotonic()))


def send_record(producer: KafkaProducer, record: Outgoing, trace_headers: ProducedHeaders = ()) -> Any:
    """Hand one record to the producer, with ``trace_headers`` unless it carries a ``traceparent`` of its own;
    the producer's future for its acknowledgement."""
    headers = with_trace(record.headers, trace_headers)
    if headers:
        return producer.send(record.topic, key=record.key.encode(), value=record.value, headers=list(headers))
    return producer.send(record.topic, key=record.key.encode(), value=record.value)


def produce(producer: KafkaProducer, outgoing: list[Outgoing]) -> InFlight:
    """Hand records to the producer without waiting (the caller overlaps other work, then waits); each carries
    the current trace context unless it has a ``traceparent`` of its own."""
    trace_headers = current_kafka_headers()
    futures = [send_record(producer, o, trace_headers) for o in outgoing]
    return InFlight(futures, produce_timeout_seconds(producer))


def produce_and_wait(producer: KafkaProducer, outgoing: list[Outgoing]) -> None:
    """Produce records and return once the broker has acknowledged every one (raise if one failed)."""
    produce(producer, outgoing).wait()


#: The bound of a whole-topic read's connection: its bootstrap (kafka-python's default 30 s) and each request of it
#: (its default 30 s), Kafka down, unreachable or frozen (accepting connections, answering nothing).
READ_CONNECT_TIMEOUT_SECONDS = 10.0
#: The bound of a whole-topic read, its connection included.
READ_TIMEOUT_SECONDS = 60.0


class TopicMissing(LookupError):
    """A topic read with ``must_exist`` that the cluster does not have (a wrong prefix or cluster, most likely)."""

    def __init__(self, settings: CommonSettings, topic: str) -> None:
        super().__init__(
            f"topic '{topic}' does not exist on the Kafka cluster at {settings.kafka_bootstrap_servers}: check "
            f"EXPORT_TOPIC_PREFIX ('{settings.topic_prefix}') and EXPORT_KAFKA_BOOTSTRAP_SERVERS, or whether the "
            "Kafka user is allowed to DESCRIBE it"
        )


def read_whole_topic(
    settings: CommonSettings,
    topic: str,
    timeout: float = READ_TIMEOUT_SECONDS,
    connect_timeout: float = READ_CONNECT_TIMEOUT_SECONDS,
    *,
    must_exist: bool = False,
) -> list[bytes]:
    """Every record value of ``topic`` as of now, from the beginning (no consumer group, nothing committed).

    The whole read, its consumer's bootstrap and close included, ends within ``timeout`` (:class:`TimeoutError`),
    given ``timeout`` at least twice ``connect_timeout``: each step waits at most ``connect_timeout`` or what is left
    of that one deadline (the bootstrap and the metadata request, which take no deadline of their own, at most
    ``connect_timeout`` each). A partition whose position is not known in time (kafka-python returns None) is a
    :class:`KafkaTimeoutError`. The consumer is closed on every path, its I/O thread stopped, its constructor failing
    included (Kafka down: it starts that thread before it bootstraps). A topic that does not exist has no records,
    or is :class:`TopicMissing` with ``must_exist``.
    """
    _, values = _read_topic(settings, topic, None, timeout, connect_timeout, must_exist=must_exist)
    return values or []


#: What a topic holds as of a read: the topic's id (a topic deleted and created again has another, whatever its
#: offsets) and each partition's number, first offset and end offset (the next record's). It changes when a record
#: is added (an end moves), retention drops one (a first offset moves) or the topic is another.
TopicVersion = tuple[str, tuple[tuple[int, int, int], ...]]


def read_topic_unless(
    settings: CommonSettings,
    topic: str,
    known: Callable[[TopicVersion], bool],
    timeout: float = READ_TIMEOUT_SECONDS,
    connect_timeout: float = READ_CONNECT_TIMEOUT_SECONDS,
    named_timeout: float | None = None,
    *,
    must_exist: bool = False,
) -> tuple[TopicVersion | None, list[bytes] | None]:
    """The topic's version and, unless ``known`` says its caller holds what the topic holds at that version, its
    record values up to the version's ends (None when ``known``). One consumer for both and one deadline, bounded
    as :func:`read_whole_topic` (the version first: the bootstrap, the metadata and two offset requests, each at
    most ``connect_timeout``; a frozen broker fails it within them, before any record is read). No version (None,
    ``known`` not asked, every record read) when the broker does not name the topic's id (:func:`topic_id`) or the
    topic has no partitions (it does not exist; :class:`TopicMissing` with ``must_exist``). ``named_timeout``: the
    bound its :class:`TimeoutError` names (a caller's whole bound, of which ``timeout`` is what is left; default
    ``timeout``)."""
    return _read_topic(settings, topic, known, timeout, connect_timeout, named_timeout, must_exist=must_exist)


def topic_id(consumer: KafkaConsumer, topic: str) -> str | None:
    """The id of ``topic`` in the consumer's metadata (asked for it already, e.g. by ``partitions_for_topic``); None
    when the broker gave none (metadata before v10, Kafka before 2.8) or kafka-python keeps it elsewhere.

    kafka-python 3.0 has no public API for it: its cluster metadata's ``topic_id`` (``consumer._client.cluster``,
    private) is read here only, and any change of that API is a None (no version: the topic read), never an error.
    """
    try:
        found = consumer._client.cluster.topic_id(topic)
    except Exception:  # noqa: BLE001 - a private API: any change of it (a TypeError, a KeyError...) is no version
        return None
    # The all-zero id is Kafka's "none" (a response that carries no id).
    return None if found is None or str(found) == "00000000-0000-0000-0000-000000000000" else str(found)


def _read_topic(
    settings: CommonSettings,
    topic: str,
    known: Callable[[TopicVersion], bool] | None,
    timeout: float,
    connect_timeout: float,
    named_timeout: float | None = None,
    *,
    must_exist: bool = False,
) -> tuple[TopicVersion | None, list[bytes] | None]:
    """:func:`read_topic_unless`; without ``known``, no version (its first offsets not asked) and every record
    polled, those past the ends included (:func:`read_whole_topic`, as it always read). ``must_exist``: a topic
    with no partitions is :class:`TopicMissing`."""
    deadline = time.monotonic() + timeout

    def step_ms() -> int:
        """What one step may wait: ``connect_timeout``, or what is left of the read's deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            named = timeout if named_timeout is None else named_timeout
            raise TimeoutError(f"could not read {topic} to its end within {named:.0f} s")
        return max(1, int(min(connect_timeout, left) * 1000))

    consumer = _whole_topic_consumer(settings, min(connect_timeout, timeout))
    values: list[bytes] = []
    version: TopicVersion | None = None
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            if must_exist:
                raise TopicMissing(settings, topic)
            return None, values
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions, timeout_ms=step_ms())
        identity = topic_id(consumer, topic) if known is not None else None
        if known is not None and identity is not None:
            firsts = consumer.beginning_offsets(partitions, timeout_ms=step_ms())
            version = (identity, tuple((p.partition, int(firsts[p]), int(ends[p])) for p in partitions))
            if known(version):
                return version, None
        while any(_position(consumer, p, step_ms()) < ends[p] for p in partitions):
            for partition, records in consumer.poll(timeout_ms=min(250, step_ms())).items():
                # With a version, what it holds only: a record added since is the next version's.
                values.extend(record.value for record in records if known is None or record.offset < ends[partition])
    finally:
        consumer.close(timeout_ms=max(0, int(min(connect_timeout, deadline - time.monotonic()) * 1000)))
    return version, values


def _position(consumer: KafkaConsumer, partition: TopicPartition, timeout_ms: int) -> int:
    """The consumer's position in ``partition``; kafka-python 3 returns None when its offset reset timed out."""
    position = consumer.position(partition, timeout_ms=timeout_ms)
    if position is None:
        raise KafkaTimeoutError(
            f"the position in {partition.topic}-{partition.partition} was not known within {timeout_ms / 1000:.1f} s"
        )
    return int(position)


#: kafka-python's network client class (what its consumer makes by default), taken from the consumer's own defaults
#: rather than imported from its internal ``kafka.net.compat``.
_NET_CLIENT: Any = KafkaConsumer.DEFAULT_CONFIG["kafka_client"]


def _whole_topic_consumer(settings: CommonSettings, connect_timeout: float) -> KafkaConsumer:
    """A consumer of no group, bootstrapped within ``connect_timeout``. kafka-python starts its client's I/O thread
    before it bootstraps, and a failed bootstrap raises from the constructor with that thread running (one leaked
    per failed read): the client is kept as it is made, and closed (its thread stopped) when the constructor fails."""
    made: list[Any] = []

    def client(**config: Any) -> Any:
        made.append(_NET_CLIENT(**config))
        return made[-1]

    bound_ms = int(connect_timeout * 1000)
    try:
        return KafkaConsumer(
            **kafka_client_config(settings),
            group_id=None,
            enable_auto_commit=False,
            bootstrap_timeout_ms=bound_ms,
            request_timeout_ms=max(bound_ms, 1_000),  # above fetch_max_wait_ms (500), as kafka-python requires
            kafka_client=client,
        )
    except BaseException:
        for started in made:
            started.close()
        raise
