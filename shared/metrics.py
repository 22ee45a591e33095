"""Prometheus metrics shared by every service (served with the probes by :mod:`shared.health`).

Names follow one scheme: ``member_export_<component>_<what>_<unit>``, counters ending ``_total``, base units
(seconds). Labels are bounded by the catalog (``definition``: an export definition's name, ``profile``: a
connection profile's name) and never carry a run id or a member. ``_created`` series are off: importing this
module turns them off for the whole process (every service imports it before it serves ``/metrics``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, disable_created_metrics

# Read at collection time by prometheus_client: every counter and histogram, whenever it was created, loses its
# ``_created`` series (one per labelled child: noise in every dashboard query and in the TSDB).
log = structlog.get_logger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

#: The package whose version ``member_export_build_info`` reports.
PACKAGE = "member-export"
#: The ``definition`` label of a run whose definition is not in the catalog (a run request naming no known
#: definition): any other value would let a record on a topic create series at will.
UNKNOWN_DEFINITION = "(unknown)"

BUILD_INFO = Gauge(
    "member_export_build_info",
    "1, labelled with the service, the installed package version and the Python version.",
    ["service", "version", "python_version"],
)
RECORDS_CONSUMED = Counter(
    "member_export_consumer_records_total", "Kafka records consumed, by service and topic.", ["service", "topic"]
)
RECORDS_DEAD_LETTERED = Counter(
    "member_export_consumer_dead_letters_total",
    "Records that could not be processed and went to the dead-letter topic, by service and source topic.",
    ["service", "topic"],
)
CONSUMER_LAG = Gauge(
    "member_export_consumer_lag",
    "Records behind the end of each partition assigned to the service's consumer (end offset minus position, "
    "as of the consumer's last poll).",
    ["service", "group", "topic", "partition"],
)


def start_definitions_series(list_definitions: Callable[[], Iterable[Any]], start: Callable[[str], None]) -> bool:
    """Start each catalog definition's labelled series at 0 (``start(name)``); False when the catalog could not be
    listed (the caller tries again later). A counter series that first appears above 0 is invisible to
    ``increase()``, and after a restart a process re-exposes no series until their events come again."""
    try:
        names = [definition.name for definition in list_definitions()]
    except Exception:  # a convenience for the alerts: never the caller's failure
        log.warning("could not list the definitions to start their series", exc_info=True)
        return False
    for name in names:
        start(name)
    return True


def package_version() -> str:
    """The installed package's version (``unknown`` when run from a source tree that is not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def record_build_info(service: str) -> None:
    """Set ``member_export_build_info`` for ``service`` (at its start)."""
    BUILD_INFO.labels(service=service, version=package_version(), python_version=platform.python_version()).set(1)


def partition_lag(highwater: int | None, position: int | None) -> int | None:
    """Records between a consumer's ``position`` (the next offset it will read) and the partition's ``highwater``
    (the offset the next record produced will get), or None while either is unknown (no fetch answered yet).

    Never negative: the high-water mark comes with fetch responses and may be older than a position moved by a
    seek or a commit since.
    """
    if highwater is None or position is None:
        return None
    return max(0, highwater - position)


class ConsumerLagSeries:
    """The ``member_export_consumer_lag`` series of one consumer: set for the partitions it has, removed for
    those it no longer has (a rebalance moved them to another member, whose own series take over)."""

    def __init__(self, service: str, group: str) -> None:
        self.service, self.group = service, group
        self._labelled: set[tuple[str, int]] = set()

    def update(self, lags: Mapping[tuple[str, int], int | None]) -> None:
        """Set each ``(topic, partition)``'s lag; a partition missing from ``lags`` or of unknown lag loses its
        series (absent, rather than a stale number)."""
        known = {partition: lag for partition, lag in lags.items() if lag is not None}
        for topic, partition in self._labelled - known.keys():
            CONSUMER_LAG.remove(self.service, self.group, topic, str(partition))
        for (topic, partition), lag in known.items():
            CONSUMER_LAG.labels(service=self.service, group=self.group, topic=topic, partition=str(partition)).set(lag)
        self._labelled = set(known)

    def clear(self) -> None:
        """Remove every series (the consumer is closed)."""
        self.update({})
