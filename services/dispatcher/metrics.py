"""The dispatcher's Prometheus metrics (names, types and labels of the README's metrics table).

Members and requests are counted by ``definition`` (the export definition's name) and ``profile`` (the
connection profile's name): both bounded by the catalog, never a run id or a member. A request's
``status_class`` is one of ``2xx``, ``3xx``, ``4xx``, ``5xx``, ``429`` (its own class, so that a throttling
partner shows without a regex) and ``error`` (no answer): see :func:`status_class`.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

MEMBERS_DELIVERED = Counter(
    "member_export_dispatcher_members_delivered_total",
    "Members delivered, by definition and profile.",
    ["definition", "profile"],
)
MEMBERS_FAILED = Counter(
    "member_export_dispatcher_members_failed_total",
    "Members that could not be delivered, by definition and profile.",
    ["definition", "profile"],
)
REQUESTS = Counter(
    "member_export_dispatcher_requests_total",
    "HTTP requests sent to partners, by definition, profile and status class (2xx, 3xx, 4xx, 5xx, 429, error).",
    ["definition", "profile", "status_class"],
)
#: The upper bounds of ``REQUEST_SECONDS``'s buckets (``+Inf`` added by the histogram).
REQUEST_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUEST_SECONDS = Histogram(
    "member_export_dispatcher_request_duration_seconds",
    "HTTP request duration (until the answer, or the failure to get one), by definition and profile.",
    ["definition", "profile"],
    buckets=REQUEST_SECONDS_BUCKETS,
)
RETRIES = Counter(
    "member_export_dispatcher_retries_total",
    "HTTP requests retried, by definition and profile.",
    ["definition", "profile"],
)
DEAD_LETTERS = Counter(
    "member_export_dispatcher_dead_letters_total",
    "Dead letters of undeliverable members, by definition.",
    ["definition"],
)
BATCHES_OF_CANCELLED_RUNS = Counter(
    "member_export_dispatcher_cancelled_batches_total", "Batches dropped because their run was cancelled."
)
ROUND_HANDED_BACK = Counter(
    "member_export_dispatcher_round_handed_back_batches_total",
    "Batches a round handed to the next one, not begun by its deadline (EXPORT_DISPATCHER_ROUND_SECONDS).",
)
IN_FLIGHT = Gauge(
    "member_export_dispatcher_in_flight_requests",
    "Requests being delivered now (a request in retry backoff included), by profile.",
    ["profile"],
)
RATE_LIMIT_RATE = Gauge(
    "member_export_dispatcher_rate_limit_requests_per_second",
    "A rate-limited profile's current rate (below its limit while the partner throttles; learned from 429s "
    "for a profile without one, absent while it has none).",
    ["profile"],
)
RATE_LIMIT_WAITS = Counter(
    "member_export_dispatcher_rate_limit_waits_total",
    "Requests (attempts, retries included) held back by a profile's rate limit, each once however often it waited.",
    ["profile"],
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "member_export_dispatcher_rate_limit_wait_seconds_total",
    "Time requests waited for a profile's rate limit.",
    ["profile"],
)
BATCH_DECODE_FALLBACKS = Counter(
    "member_export_dispatcher_batch_decode_fallbacks_total",
    "Member-batch records the fast decoder left to the model's own decoding (invalid records included).",
)
INSPECTOR_DROPPED = Counter(
    "member_export_dispatcher_inspector_dropped_total",
    "Attempts the attempt inspector could not keep (its buffer was full, the catalog write failed, or it failed).",
)


#: Every ``status_class`` value (their series are started at 0 when a definition and profile are first seen).
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "429", "error")


def status_class(status: int | None) -> str:
    """The ``status_class`` label of an answer's status: ``429`` on its own, else ``2xx``..``5xx``; ``error``
    when there was no answer (``None``)."""
    if not status:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


CIRCUIT_STATE = Gauge(
    "member_export_circuit_state",
    "A connection profile's circuit breaker in this dispatcher: 0 closed, 1 half-open (probing), 2 open "
    "(its batches wait), by profile (profiles with a circuit_breaker setting only).",
    ["profile"],
)
CIRCUIT_TRANSITIONS = Counter(
    "member_export_circuit_transitions_total",
    "Changes of a profile's circuit breaker, by profile and the state entered (closed, open, half_open).",
    ["profile", "state"],
)


class InFlightCount:
    """The requests of one profile being delivered now: a plain count kept on the event loop, which its
    ``member_export_dispatcher_in_flight_requests`` series reads when scraped (a gauge's ``inc`` and ``dec`` take a
    lock and two checks each, a request pays them twice)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


_IN_FLIGHT_COUNTS: dict[str, InFlightCount] = {}


def in_flight_count(profile: str) -> InFlightCount:
    """The in-flight count of ``profile``, its gauge series reading it (made on first use, kept: the catalog bounds
    the profiles, and the series is never removed)."""
    found = _IN_FLIGHT_COUNTS.get(profile)
    if found is None:
        counted = found = _IN_FLIGHT_COUNTS[profile] = InFlightCount()
        IN_FLIGHT.labels(profile).set_function(lambda: counted.count)
    return found


#: Children kept per metric at most by :func:`child` (the catalog bounds the labels; this bounds memory).
MAX_CHILDREN = 10_000
_CHILDREN: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: ``labels()`` takes a lock and builds its key on every call, and a
    request counts itself in four series. Only for series never removed (those of the requests)."""
    key = (metric, labels)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= MAX_CHILDREN:
            _CHILDREN.clear()  # the series stay in the registry: they are only looked up again
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


#: The bucket a duration falls in is the first whose upper bound is at least the duration (``bisect_left``): what
#: ``Histogram.observe`` picks; the last one is ``+Inf``.
_UPPER_BOUNDS = (*(float(bound) for bound in REQUEST_SECONDS_BUCKETS), float("inf"))
_CLASS_OF: dict[int | None, str] = {}


class RequestTally:
    """The requests of one batch (a definition and profile), counted in plain numbers on the event loop and added to
    their series (``member_export_dispatcher_requests_total`` by status class, the observations of
    ``member_export_dispatcher_request_duration_seconds``) by :meth:`flush`: the series' values after a flush are
    those one ``inc`` and one ``observe`` per attempt give, for about a fifth of their CPU (each takes a lock, checks
    and Python calls a request).

    :meth:`count` flushes by itself when the attempt is not a success (a failing partner shows at once) and when
    the oldest attempt waiting is :attr:`FLUSH_SECONDS` old; on an event loop, the first success waiting also
    schedules a flush :attr:`FLUSH_SECONDS` later (one timer a second at most, cancelled by an earlier flush), so a
    success shows within a second while the rest of its batch is still in flight; the dispatcher flushes at the end
    of each batch.
    """

    __slots__ = ("_buckets", "_oldest", "_seconds", "_statuses", "_timer", "labels")

    #: How long a success may wait to be added to its series while its batch goes on (seconds).
    FLUSH_SECONDS = 1.0

    def __init__(self, labels: tuple[str, str]) -> None:
        #: The definition and profile the requests are counted under.
        self.labels = labels
        self._statuses: dict[str, int] = {}
        self._buckets: dict[int, int] = {}
        self._seconds = 0.0
        self._oldest: float | None = None  # when the first attempt waiting ended (perf_counter)
        self._timer: asyncio.TimerHandle | None = None  # the flush scheduled when the first success began waiting

    def count(self, status: int | None, seconds: float, success: bool, now: float) -> None:
        """An attempt that ended at ``now`` (``time.perf_counter``) after ``seconds``, with an answer's ``status``
        (None: no answer, class ``error``); flushed at once unless it was a success."""
        status_of = _CLASS_OF.get(status)
        if status_of is None:
            status_of = _CLASS_OF[status] = status_class(status)
        statuses = self._statuses
        statuses[status_of] = statuses.get(status_of, 0) + 1
        self.observe(seconds)
        if not success:
            self.flush()
            return
        if self._oldest is None:
            self._oldest = now
            if self._timer is None:
                # No event loop (counted by hand): flushed by a later count or flush.
                with contextlib.suppress(RuntimeError):
                    self._timer = asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self._flush_on_time)
        elif now - self._oldest >= self.FLUSH_SECONDS:
            self.flush()

    def observe(self, seconds: float) -> None:
        """A duration with no status counted (an attempt cancelled while waiting for its answer)."""
        bucket = bisect_left(_UPPER_BOUNDS, seconds)
        buckets = self._buckets
        buckets[bucket] = buckets.get(bucket, 0) + 1
        self._seconds += seconds

    def _flush_on_time(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Add what was counted since the last flush to the series (nothing when nothing was)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buckets:
            return
        statuses, buckets, seconds = self._statuses, self._buckets, self._seconds
        self._statuses, self._buckets, self._seconds, self._oldest = {}, {}, 0.0, None
        for status_of, requests in statuses.items():
            child(REQUESTS, *self.labels, status_of).inc(requests)
        add_observations(child(REQUEST_SECONDS, *self.labels), buckets, seconds)


def add_observations(histogram: Any, buckets: dict[int, int], seconds: float) -> None:
    """Add to ``histogram`` (a child of ``REQUEST_SECONDS``) observations summing to ``seconds``, ``buckets[i]`` of
    them in its ``i``-th bucket: what as many ``observe`` calls add. prometheus-client has no call for several
    observations at once, so its bucket and sum values are added to (its ``_buckets`` and ``_sum``, present in every
    release since 0.0.x; a unit test compares the result with ``observe``)."""
    histogram._sum.inc(seconds)
    values = histogram._buckets
    for bucket, observations in buckets.items():
        values[bucket].inc(observations)
