"""Kafka wrapped once: clients built from settings (TLS, SASL), the start-up checks, topics ensured or
checked, and the at-least-once consumer loop.

The consumer loop (and what only it needs: metrics, retries, the outage rules) is loaded on first use of
one of its names, so a process that only produces (``exportctl run``) does not load it.
"""

from typing import TYPE_CHECKING, Any

from shared.kafka.client_config import kafka_client_config
from shared.kafka.clients import (
    InFlight,
    make_consumer,
    make_producer,
    produce,
    produce_and_wait,
    read_whole_topic,
)
from shared.kafka.connection_check import KafkaSetupError, check_kafka_connection
from shared.kafka.records import Consumed, Headers, Outgoing, RecordPosition
from shared.kafka.socket_leaks import close_leaked_sockets
from shared.kafka.startup import prepare_kafka
from shared.kafka.topic_setup import ensure_topics, topic_specs

close_leaked_sockets()  # kafka-python 3.0's socket leaks, fixed for every client of the process

if TYPE_CHECKING:
    from shared.kafka.loop import ConsumerLoop, Rejection, dead_letter_record, decode_record, value_decoder

#: The names of :mod:`shared.kafka.loop`, imported when first used.
_LOOP_NAMES = frozenset({"ConsumerLoop", "Rejection", "dead_letter_record", "decode_record", "value_decoder"})


def __getattr__(name: str) -> Any:
    if name in _LOOP_NAMES:
        from shared.kafka import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Consumed",
    "ConsumerLoop",
    "Headers",
    "InFlight",
    "KafkaSetupError",
    "Outgoing",
    "RecordPosition",
    "Rejection",
    "check_kafka_connection",
    "dead_letter_record",
    "decode_record",
    "ensure_topics",
    "kafka_client_config",
    "make_consumer",
    "make_producer",
    "prepare_kafka",
    "produce",
    "produce_and_wait",
    "read_whole_topic",
    "topic_specs",
    "value_decoder",
]
