"""exportctl's Kafka producer, and its connection made on a thread while ``exportctl run`` reads the catalog.

Connecting is mostly waiting: a TCP connection, the connection check's exchange, the producer's bootstrap, the
topics listed, and kafka-python asks for a topic's metadata (at the first send) no sooner than ``retry_backoff_ms``
(100 ms) after the bootstrap's. ``exportctl run`` spends that time loading the catalog's libraries and reading the
definition, one after the other; :class:`EarlyProducer` does the waiting on a thread meanwhile, so the run request is
sent on a producer that is ready (about 0.13 s of ``exportctl run``'s 0.8 s, measured).

The thread only reads: it connects and lists the topics. The missing ones are created on the main thread at the
first publication, so a refused command, which has connected, creates nothing (a typo against a cluster with the
wrong ``EXPORT_TOPIC_PREFIX`` leaves no stray topics). What the command sees does not change: a connection that
failed is said at the first publication, as the publication's failure (nothing was handed to a broker), and a command
refused before it publishes publishes nothing; its producer is closed, or closed as soon as it is made. The Kafka
client is loaded on the main thread before the thread starts, so that the two threads never import at the same time
what imports the other's.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - what the thread's first connection loads (the host name's encoding), loaded here
import threading
from typing import TYPE_CHECKING

from kafka import KafkaProducer

from shared.cli.reachability import require_kafka
from shared.kafka.clients import PRODUCER_CLOSE_SECONDS, close_producer, make_producer
from shared.kafka.connection_check import CHECK_TIMEOUT_SECONDS, check_kafka_connection
from shared.kafka.topic_setup import ensure_topics, missing_topics

if TYPE_CHECKING:
    from shared.cli.common import CliSettings


def open_producer(settings: CliSettings, *, max_block_seconds: float | None = None) -> KafkaProducer:
    """exportctl's producer, connected to the broker the settings name, the topics made if missing; its ``send()``
    blocks (for a topic's metadata) ``max_block_seconds`` at most, else kafka-python's 60 s.

    A broker that cannot be reached is a :class:`~shared.cli.exits.CliError` (unreachable) at once, a refused TLS/SASL
    setting is named (not retried); the producer of a failed topic set-up is closed.
    """
    producer, missing = connect_producer(settings, max_block_seconds=max_block_seconds)
    try:
        _create_topics(settings, missing)
    except BaseException:
        close_producer(producer, PRODUCER_CLOSE_SECONDS)
        raise
    return producer


def connect_producer(
    settings: CliSettings, *, max_block_seconds: float | None = None
) -> tuple[KafkaProducer, list[str]]:
    """exportctl's producer, connected as :func:`open_producer`'s, and the topics missing: listed, not created.

    With ``EXPORT_TOPICS_CREATE=false`` a missing topic is :class:`~shared.kafka.KafkaSetupError` here already; the
    producer of a failed listing is closed.
    """
    require_kafka(settings.kafka_bootstrap_servers)
    # A refused TLS/SASL setting is named, not retried; a broker answering nothing is given the request timeout
    # (the check's own 10 s at most) before the command says it could not connect.
    check_kafka_connection(settings, min(CHECK_TIMEOUT_SECONDS, settings.kafka_request_timeout_ms / 1000))
    # The producer first: its bootstrap reads the cluster's metadata for no topic (nothing is created), and
    # kafka-python asks for the next metadata (the topic's, at the first send) no sooner than retry_backoff_ms
    # (100 ms) after that. Listing the topics meanwhile costs that wait nothing.
    producer = make_producer(settings, "exportctl", max_block_seconds=max_block_seconds)
    try:
        missing = missing_topics(settings)
    except BaseException:
        close_producer(producer, PRODUCER_CLOSE_SECONDS)
        raise
    return producer, missing


def _create_topics(settings: CliSettings, missing: list[str]) -> None:
    if missing:  # none, once the pipeline has run: nothing more to ask the broker
        ensure_topics(settings, missing)


class EarlyProducer:
    """exportctl's producer, being connected (:func:`connect_producer`) on a thread from the moment this is made.

    :meth:`producer` waits for it, raises what connecting raised, and creates the topics that were missing (on the
    caller's thread: a command that never asks for the producer creates none); :meth:`close` closes it, within
    ``PRODUCER_CLOSE_SECONDS`` (and about a second) as a producer opened on the main thread, or has the thread close it
    when it is made after (a command refused while its broker was being reached does not wait for the broker).
    """

    def __init__(self, settings: CliSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._producer: KafkaProducer | None = None
        self._missing: list[str] = []
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._open, args=(settings,), name="exportctl-kafka", daemon=True)
        self._thread.start()

    def _open(self, settings: CliSettings) -> None:
        producer: KafkaProducer | None = None
        try:
            producer, missing = connect_producer(settings)
            with self._lock:
                if not self._closed:
                    self._producer, self._missing, producer = producer, missing, None
        except BaseException as exc:  # noqa: BLE001 - said by producer(), at the first publication, whatever it is
            self._error = exc
        finally:
            self._opened.set()  # whatever happened: producer() never waits for a thread that has ended
        if producer is not None:  # the command ended before its producer was ready: nothing to publish
            close_producer(producer, PRODUCER_CLOSE_SECONDS)

    def producer(self) -> KafkaProducer:
        """The producer, once connected, the missing topics created; what connecting or creating raised if it failed."""
        self._opened.wait()
        if self._error is not None:
            raise self._error
        with self._lock:
            producer, missing = self._producer, self._missing
        if producer is None:
            raise RuntimeError("exportctl's Kafka producer was closed")
        _create_topics(self._settings, missing)
        self._missing = []  # created: a later publication does not ask again
        return producer

    def close(self) -> None:
        """Close the producer if it is made; else have it closed as soon as it is."""
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, PRODUCER_CLOSE_SECONDS)
