"""Start-up shared by the services' composition roots: logging, metrics, topics, the consumer loop."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from shared.catalog.schema import check_catalog_schema
from shared.health import Health, serve_health_and_metrics
from shared.kafka import ConsumerLoop, Outgoing, make_consumer, make_producer, prepare_kafka
from shared.kafka.clients import DEFAULT_MAX_POLL_INTERVAL_MS
from shared.kafka.loop import Decoder, OutageProbe, RoundHandler
from shared.log import configure_logging
from shared.metrics import record_build_info
from shared.settings import CommonSettings
from shared.shutdown import stop_on_signals, stop_requested
from shared.stack_dumps import enable_stack_dumps
from shared.tracing import install as install_tracing

E = TypeVar("E")


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, schemas, clients: everything start-up built) out of the garbage
    collector's reach, so that its full collections only traverse what the service built since.

    The service's loop allocates briskly (a one-member request builds dozens of objects), which sets off a full
    collection every few thousand requests; each one traversed the whole start-up heap (about 160,000 objects,
    0.1-0.2 s on the event loop: 36 us a request in the dispatcher) and never found garbage there. Objects
    frozen are still freed by reference counting; only cycles among them are never collected (start-up's cycles
    live as long as the process anyway). Call it once, when start-up is done, just before the loop runs."""
    gc.collect()  # start-up's own garbage goes first: what is frozen stays
    gc.freeze()


#: Liveness allows a loop this long beyond its own bound (a poll's timeout, a sweep) before it calls it stalled.
STALL_MARGIN_SECONDS = 60.0


def start_service(settings: CommonSettings, service: str) -> Health:
    """Configure logging (and every thread's stack on SIGUSR1), exit unless the catalog is at this release's
    schema, serve /metrics (with ``member_export_build_info`` set), /livez and /readyz, and make sure the topics
    exist; return the health the service's loop reports to."""
    # SIGTERM during start-up ends the process at once with status 0 (not 143); the entry module asked already,
    # before its imports (shared.process_start): asked again for an entry point that did not.
    stop_on_signals()
    configure_logging(settings.log_level, settings.log_format, service)
    enable_stack_dumps()  # kill -USR1 <pid>: every thread's stack logged, a JSON line each (a hang says where it waits)
    install_tracing(service)  # spans named member-export-<service>; exported over OTLP only when configured
    record_build_info(service)
    check_catalog_schema(settings.catalog_url)
    health = Health(stall_seconds=DEFAULT_MAX_POLL_INTERVAL_MS / 1000 + STALL_MARGIN_SECONDS)
    if settings.metrics_port:
        serve_health_and_metrics(settings.metrics_port, health)
    # Exits naming the setting when Kafka refuses the credentials or certificates, or when topics owned by ops
    # are missing (EXPORT_TOPICS_CREATE=false); creates the missing topics otherwise.
    prepare_kafka(settings)
    structlog.get_logger(service).info(
        "service starting", kafka=settings.kafka_bootstrap_servers, topic_prefix=settings.topic_prefix
    )
    return health


def build_loop(
    settings: CommonSettings,
    *,
    service: str,
    topic: str | list[str],
    decode: Decoder[E],
    handler: Callable[[E], list[Outgoing]] | None = None,
    periodic: Callable[[], list[Outgoing]] | None = None,
    periodic_seconds: float = 30.0,
    handle_round: RoundHandler[E] | None = None,
    priority_topics: list[str] | None = None,
    health: Health | None = None,
    rounds_in_flight: int = 1,
    outage_probe: OutageProbe | None = None,
    **consumer_overrides: Any,
) -> ConsumerLoop[E]:
    """A consumer loop for ``service`` on ``topic`` (or topics), in the consumer group named after the service.

    ``handler`` handles records one by one; ``handle_round`` a poll's records at once (give one of them), up to
    ``rounds_in_flight`` polls' rounds at once (:class:`shared.kafka.ConsumerLoop`).
    ``health`` (from :func:`start_service`) is told when the loop comes round and when it waits out an outage;
    its stall bound follows the consumer's ``max_poll_interval_ms``.
    ``outage_probe`` (:func:`shared.database_probe.database_outage_probe` of the service's engines) ends a wait
    after a database outage once the databases answer again, instead of the whole backoff.
    """
    if health is not None and "max_poll_interval_ms" in consumer_overrides:
        health.stall_seconds = consumer_overrides["max_poll_interval_ms"] / 1000 + STALL_MARGIN_SECONDS
    return ConsumerLoop(
        service=service,
        consumer=make_consumer(
            settings,
            f"{settings.topic_prefix}member-export-{service}",
            topic if isinstance(topic, list) else [topic],
            **consumer_overrides,
        ),
        producer=make_producer(settings, service),
        decode=decode,
        handler=handler,
        dead_letter_topic=settings.topics.dead_letters,
        periodic=periodic,
        periodic_seconds=periodic_seconds,
        handle_round=handle_round,
        priority_topics=priority_topics,
        health=health,
        rounds_in_flight=rounds_in_flight,
        stopping=stop_requested(),  # one stop event a process (shared.shutdown)
        outage_probe=outage_probe,
    )
