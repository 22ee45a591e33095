"""Kafka wrapped once: clients built from settings (TLS, SASL), the start-up checks, topics ensured or
checked, and the at-least-once consumer loop."""

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
from shared.kafka.loop import ConsumerLoop, Rejection, dead_letter_record, decode_record, value_decoder
from shared.kafka.records import Consumed, Headers, Outgoing
from shared.kafka.startup import prepare_kafka
from shared.kafka.topic_setup import ensure_topics, topic_specs

__all__ = [
    "Consumed",
    "ConsumerLoop",
    "Headers",
    "InFlight",
    "KafkaSetupError",
    "Outgoing",
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
