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
from shared.kafka.loop import ConsumerLoop, Rejection, dead_letter_record, decode_record, value_decoder
from shared.kafka.records import Consumed, Headers, Outgoing

__all__ = [
    "Consumed",
    "ConsumerLoop",
    "Headers",
    "InFlight",
    "Outgoing",
    "Rejection",
    "dead_letter_record",
    "decode_record",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "produce",
    "produce_and_wait",
    "read_whole_topic",
    "value_decoder",
]
