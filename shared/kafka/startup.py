"""What a service does with Kafka before its loop: check that Kafka takes its settings, then its topics."""

from __future__ import annotations

import structlog

from shared.kafka.connection_check import KafkaSetupError, check_kafka_connection
from shared.kafka.topic_setup import ensure_topics
from shared.settings import CommonSettings


def prepare_kafka(settings: CommonSettings) -> None:
    """Check the connection settings (TLS, SASL) against Kafka, then create or check the topics
    (``EXPORT_TOPICS_CREATE``); exit (``SystemExit`` with the reason, naming the setting) when Kafka refuses
    them, rather than retrying for ever."""
    try:
        check_kafka_connection(settings)
        ensure_topics(settings)
    except KafkaSetupError as exc:
        structlog.get_logger(__name__).error("kafka refuses this service's settings", reason=str(exc))
        raise SystemExit(str(exc)) from None
