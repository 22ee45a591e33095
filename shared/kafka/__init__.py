"""Kafka wrapped once: clients built from settings, topics ensured, and the at-least-once consumer loop."""

from shared.kafka.clients import ensure_topics, make_consumer, make_producer, produce_and_wait
from shared.kafka.loop import ConsumerLoop, Outgoing

__all__ = ["ConsumerLoop", "Outgoing", "ensure_topics", "make_consumer", "make_producer", "produce_and_wait"]
