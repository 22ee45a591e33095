"""Kafka wrapped once: clients built from settings, topics ensured, and the at-least-once consumer loop."""

from shared.kafka.clients import (
    InFlight,
    ensure_topics,
    make_consumer,
    make_producer,
    produce,
    produce_and_wait,
    read_whole_topic,
)
from shared.kafka.loop import ConsumerLoop, value_decoder
from shared.kafka.records import Headers, Outgoing

__all__ = [
    "ConsumerLoop",
    "Headers",
    "InFlight",
    "Outgoing",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "produce",
    "produce_and_wait",
    "read_whole_topic",
    "value_decoder",
]
