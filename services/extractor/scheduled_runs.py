"""Scheduled runs published ahead of their instant: when they may start, and whether they still should.

The scheduler publishes a run due within its lookahead (``EXPORT_SCHEDULER_LOOKAHEAD_SECONDS``) at once, with its
instant (``scheduled_for``) and its own time (``requested_at``, before the instant). The extractor holds such a
request back until its instant by its own clock (:meth:`StartTimes.hold`: the consumer loop keeps it uncommitted
and goes on with the requests after it), so a burst of runs due at the same second is in the extractor before that
second. A request scheduled further ahead than ``max_wait`` (clocks out of step, or a publisher other than the
scheduler) starts when received, with a warning: it is never held without bound.

When such a run starts, it is judged as the scheduler would have judged it at its instant (:func:`withdrawal`,
:func:`overlap_skip`): not started, and recorded nowhere, as if never fired, when its definition was deleted, its
schedule disabled, or moved off that instant meanwhile; recorded as skipped when its overlap policy is ``skip``
and another run of the definition is active (the scheduler publishes such a run ahead only while its definition
has no run active: this catches a run started since).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter, Histogram

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule import Overlap, fire_times
from shared.events import RangeRequested, RunRequested, RunSkipped, Trigger, utc_now
from shared.kafka.held_records import HoldRecord

log = structlog.get_logger(__name__)

START_DELAY = Histogram(
    "member_export_extractor_scheduled_start_delay_seconds",
    "From a scheduled run's due instant to the extractor starting it (what a user sees as the fire delay).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
NOT_STARTED = Counter(
    "member_export_extractor_scheduled_runs_not_started_total",
    "Scheduled runs published ahead and not started at their instant, by reason: their definition deleted, "
    "disabled or rescheduled meanwhile (withdrawn, recorded nowhere), or overlap (recorded as skipped).",
    ["reason"],
)
STARTED_EARLY = Counter(
    "member_export_extractor_scheduled_runs_started_early_total",
    "Scheduled runs started when received although due later: scheduled further ahead than "
    "EXPORT_EXTRACTOR_MAX_START_WAIT_SECONDS (clocks out of step, or another publisher).",
)
for _reason in ("deleted", "disabled", "rescheduled", "overlap"):
    NOT_STARTED.labels(reason=_reason)


def published_ahead(request: RunRequested) -> bool:
    """Whether ``request`` is the scheduler's run published before its instant (by the publisher's clock).

    The scheduler always names the definition by id; another system's request with trigger ``schedule`` does not:
    it waits for its instant but is never withdrawn (or skipped) as the scheduler's own would be."""
    return (
        request.trigger is Trigger.SCHEDULE
        and request.definition_id is not None
        and request.scheduled_for is not None
        and request.requested_at < request.scheduled_for
    )


@dataclass(frozen=True)
class StartTimes:
    """When run requests may start: a scheduled run not before its instant, waited for at most ``max_wait``."""

    max_wait: timedelta
    now: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic

    def pending(self, request: RunRequested | RangeRequested) -> HoldRecord | None:
        """What :meth:`hold` says, counting and logging nothing: to tell which requests are due ahead of
        beginning them (a request handed back to later rounds would be counted again at each)."""
        wait = self._wait(request)
        if wait is None or wait > self.max_wait.total_seconds():
            return None
        return self._held(request, wait)

    def hold(self, request: RunRequested | RangeRequested) -> HoldRecord | None:
        """A hold until the request's instant when it is due later (and at most ``max_wait`` from now); None
        when it may start now. Called as the request is begun: a run started early is counted and logged."""
        wait = self._wait(request)
        if wait is None:
            return None
        if wait > self.max_wait.total_seconds():
            assert isinstance(request, RunRequested)
            assert request.scheduled_for is not None
            STARTED_EARLY.inc()
            log.warning(
                "scheduled run started before its instant: scheduled_for is further ahead than the extractor waits",
                run_id=str(request.run_id),
                scheduled_for=request.scheduled_for.isoformat(),
                ahead_seconds=round(wait, 3),
                max_wait_seconds=self.max_wait.total_seconds(),
            )
            return None
        return self._held(request, wait)

    def _held(self, request: RunRequested | RangeRequested, wait: float) -> HoldRecord:
        assert isinstance(request, RunRequested)
        assert request.scheduled_for is not None
        return HoldRecord(f"scheduled for {request.scheduled_for.isoformat()}", until=self.monotonic() + wait)

    def _wait(self, request: RunRequested | RangeRequested) -> float | None:
        """How long until a scheduled run's instant (seconds); None when it is not one, or is due."""
        if not isinstance(request, RunRequested) or request.scheduled_for is None:
            return None
        wait = (request.scheduled_for - self.now()).total_seconds()
        return wait if wait > 0 else None

    def observe_start(self, request: RunRequested) -> None:
        """Count a scheduled run's start delay (its first start only: a resume is not a fire)."""
        if request.scheduled_for is not None:
            START_DELAY.observe(max(0.0, (self.now() - request.scheduled_for).total_seconds()))


def withdrawal(request: RunRequested, definition: ExportDefinition | None) -> str | None:
    """Why a run published ahead of its instant no longer fires: ``deleted``, ``disabled`` or ``rescheduled``
    (its schedule no longer due at that instant); None when it still does."""
    assert request.scheduled_for is not None
    if definition is None:
        return "deleted"
    schedule = definition.schedule
    if not schedule.enabled:
        return "disabled"
    instant = request.scheduled_for
    if fire_times(schedule, instant - timedelta(microseconds=1), instant, limit=1) != [instant]:
        return "rescheduled"
    return None


def withdrawn(request: RunRequested, reason: str) -> None:
    """Log and count a withdrawn run (it is recorded nowhere, as the scheduler would not have fired it)."""
    NOT_STARTED.labels(reason=reason).inc()
    log.info(
        "scheduled run withdrawn: its definition changed after it was published ahead",
        run_id=str(request.run_id),
        definition=request.definition,
        reason=reason,
        scheduled_for=request.scheduled_for.isoformat() if request.scheduled_for else None,
    )


def overlap_skip(request: RunRequested, definition: ExportDefinition, active: uuid.UUID | None) -> RunSkipped | None:
    """The run's skipped record when its definition skips overlapping runs and ``active`` (another of its runs)
    is still going; None when it starts."""
    assert request.scheduled_for is not None
    if definition.schedule.overlap is not Overlap.SKIP or active is None or active == request.run_id:
        return None
    NOT_STARTED.labels(reason="overlap").inc()
    log.info("scheduled run skipped", definition=definition.name, run_id=str(request.run_id), active_run=str(active))
    return RunSkipped(
        run_id=request.run_id,
        definition=definition.name,
        scheduled_for=request.scheduled_for,
        reason=f"previous run {active} was still active",
    )
