"""Prometheus metrics shared by every service, and the /metrics endpoint.

Base units and suffixes (``_total``, ``_seconds``); labels are bounded (service, topic, status class,
definition names are not used as labels: they are unbounded in a large deployment).
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

RECORDS_CONSUMED = Counter(
    "export_records_consumed_total", "Kafka records consumed, by service and topic.", ["service", "topic"]
)
RECORDS_DEAD_LETTERED = Counter(
    "export_records_dead_lettered_total",
    "Records that could not be processed and went to the dead-letter topic, by service and source topic.",
    ["service", "topic"],
)


def serve_metrics(port: int) -> None:
    """Serve /metrics on ``port`` (all interfaces, for the Prometheus scraper); 0 disables it."""
    if port:
        start_http_server(port)
