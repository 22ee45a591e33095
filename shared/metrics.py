"""Prometheus metrics shared by every service (served with the probes by :mod:`shared.health`).

Base units and suffixes (``_total``, ``_seconds``); labels are bounded (service, topic, status class,
definition names are not used as labels: they are unbounded in a large deployment).
"""

from __future__ import annotations

from prometheus_client import Counter

RECORDS_CONSUMED = Counter(
    "export_records_consumed_total", "Kafka records consumed, by service and topic.", ["service", "topic"]
)
RECORDS_DEAD_LETTERED = Counter(
    "export_records_dead_lettered_total",
    "Records that could not be processed and went to the dead-letter topic, by service and source topic.",
    ["service", "topic"],
)
