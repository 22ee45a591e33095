"""One scheduler tick: hold the lease, sync edited schedules, fire what is due, record what was missed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.scheduler.clock import Clock
from services.scheduler.planning import Plan, anchor_for, fires_on_time, next_due_after, plan, scheduled_run_id
from services.scheduler.ports import ActiveRuns, DefinitionsChanges, SchedulingStore
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule import Overlap
from shared.domain.schedule_state import DueSchedule, ScheduleAdvance, ScheduleState
from shared.events import RunMissed, RunRequested, RunSkipped, Trigger
from shared.kafka import Outgoing
from shared.metrics import start_definitions_series
from shared.topics import Topics
from shared.tracing import new_trace

log = structlog.get_logger(__name__)

LEASE_NAME = "scheduler"

#: The longest a change is left unseen: every definition is compared with the scheduler's view at least this often,
#: whatever the fingerprint says (one that is equal after a change is unlikely, but not impossible: a deletion and a
#: creation with earlier clocks). Measured at 10,000 definitions: ~12 ms a comparison, against ~3-7 ms a fingerprint.
FULL_SYNC_EVERY = timedelta(minutes=1)

FIRES = Counter("member_export_scheduler_runs_fired_total", "Scheduled runs requested, by definition.", ["definition"])
FIRE_DELAY = Histogram(
    "member_export_scheduler_fire_delay_seconds",
    "From a run's due instant to its request being published (0 for a run published ahead of its instant).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
MISSED = Counter(
    "member_export_scheduler_runs_missed_total", "Scheduled runs recorded as missed, by definition.", ["definition"]
)
SKIPPED = Counter(
    "member_export_scheduler_runs_skipped_total",
    "Scheduled runs skipped (the previous run was active), by definition.",
    ["definition"],
)
SCHEDULED_DEFINITIONS = Gauge(
    "member_export_scheduler_definitions", "Definitions with an enabled schedule that has an instant ahead."
)
SCHEDULE_ERRORS = Counter(
    "member_export_scheduler_schedule_errors_total",
    "Times a definition's fire times could not be computed (the log names it): it is left with no next due instant, "
    "not fired until edited; every other definition fires as usual.",
)
LEADER = Gauge("member_export_scheduler_leader", "1 while this replica holds the scheduling lease.")


T = TypeVar("T")


def _isolated(definition: str, compute: Callable[[], T], fallback: T) -> T:
    """``compute()`` (one definition's schedule maths), or ``fallback`` when it raises: logged with the definition's
    name and counted, so one definition's schedule never stops the others' (the tick carries on)."""
    try:
        return compute()
    except Exception as exc:  # noqa: BLE001 - whatever one schedule's maths raises, the others still fire
        SCHEDULE_ERRORS.inc()
        log.error("schedule not computable: not due until edited", definition=definition, error=type(exc).__name__)
        return fallback


def _next_due(due: DueSchedule, moment: datetime) -> datetime | None:
    return _isolated(due.definition.name, lambda: next_due_after(due.definition.schedule, moment), None)


def _start_series_of(definition: str) -> None:
    for counter in (FIRES, MISSED, SKIPPED):
        counter.labels(definition=definition)


class Scheduler:
    """Evaluates schedules against ``clock``; only the replica holding the lease acts."""

    def __init__(
        self,
        *,
        scheduling: SchedulingStore,
        definitions: DefinitionsChanges,
        runs: ActiveRuns,
        clock: Clock,
        topics: Topics,
        publish: Callable[[list[Outgoing]], None],
        replica_id: str = "scheduler",
        lease_seconds: float = 15.0,
        catch_up: timedelta = timedelta(hours=1),
        lookahead: timedelta = timedelta(0),
    ) -> None:
        self.scheduling, self.definitions, self.runs = scheduling, definitions, runs
        self.clock = clock
        self.topics = topics
        self.publish = publish
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self.catch_up = catch_up
        #: Runs due within this much of now are published ahead with their instant (EXPORT_SCHEDULER_LOOKAHEAD_SECONDS).
        self.lookahead = lookahead
        self._fingerprint: tuple[int, int, datetime | None] | None = None
        self._full_sync_due: datetime | None = None
        self._series_started = False

    def _start_series(self) -> None:
        """Once per process, when leading: every definition's fired, missed and skipped series at 0. A counter
        series first seen above 0 is invisible to increase(), and after a restart the counters start again
        (the schedules were synced before: _sync finds nothing new to name them)."""
        if not self._series_started:
            self._series_started = start_definitions_series(
                lambda: self.definitions.list_objects(ExportDefinition), _start_series_of
            )

    def tick(self) -> list[RunRequested]:
        """Fire what is due now, and publish ahead what is due within the lookahead, if this replica leads; return
        the requests published."""
        now = self.clock.now()
        leading = self.scheduling.acquire_lease(LEASE_NAME, self.replica_id, now, self.lease_seconds)
        LEADER.set(1 if leading else 0)
        if not leading:
            self._fingerprint = None  # whoever leads may change the schedules: sync again when leading
            return []
        self._start_series()
        self._sync(now)
        due = self.scheduling.due_schedules(now + self.lookahead)
        busy = self.runs.active_runs([d.definition.name for d in due if d.definition.schedule.overlap == Overlap.SKIP])
        # A run that would be skipped were it due now is not published ahead: it waits for its instant and is judged
        # then, as without lookahead (a run is published ahead at the first tick that finds its definition idle).
        ahead = [d for d in due if d.next_due_at > now and d.definition.name not in busy]
        current = [d for d in due if d.next_due_at <= now]
        on_time: list[DueSchedule] = []
        late: list[DueSchedule] = []
        for d in current:
            (on_time if fires_on_time(d.next_due_at, now, self.catch_up) else late).append(d)
        # On-time schedules fire first, before any schedule maths, to keep the fire delay short; so do the runs
        # published ahead. The extractor judges those again at their instant (services.extractor.scheduled_runs).
        fired, outgoing = self._act_all(
            [(d, Plan(fire=d.next_due_at, missed=[], next_due=None)) for d in on_time + ahead], busy
        )
        self._publish(fired, outgoing)
        advances = [ScheduleAdvance(d.definition_id, d.handled_until, now, _next_due(d, now)) for d in on_time]
        # A run published ahead is handled up to its own instant: the next one is the first after it.
        advances += [
            ScheduleAdvance(d.definition_id, d.handled_until, d.next_due_at, _next_due(d, d.next_due_at)) for d in ahead
        ]
        plans = [(d, self._plan(d, now)) for d in late]
        late_fired, late_outgoing = self._act_all(plans, busy)
        self._publish(late_fired, late_outgoing)
        advances += [ScheduleAdvance(d.definition_id, d.handled_until, now, p.next_due) for d, p in plans]
        # The schedules move on after their runs are published: a crash in between fires again with the
        # same run ids, which the extractor ignores.
        self.scheduling.advance_schedules(advances)
        return fired + late_fired

    def _plan(self, due: DueSchedule, now: datetime) -> Plan:
        return _isolated(
            due.definition.name,
            lambda: plan(due.definition.schedule, handled_until=due.handled_until, now=now, catch_up=self.catch_up),
            Plan(fire=None, missed=[], next_due=None),
        )

    def _act_all(
        self, decisions: list[tuple[DueSchedule, Plan]], busy: dict[str, uuid.UUID]
    ) -> tuple[list[RunRequested], list[Outgoing]]:
        fired: list[RunRequested] = []
        outgoing: list[Outgoing] = []
        for due, decision in decisions:
            requests, records = self._act(due, decision, busy.get(due.definition.name))
            fired += requests
            outgoing += records
        return fired, outgoing

    def _publish(self, fired: list[RunRequested], outgoing: list[Outgoing]) -> None:
        if not outgoing:
            return
        self.publish(outgoing)
        published_at = self.clock.now()
        log.info("runs requested", runs=len(fired), records=len(outgoing))
        for request in fired:
            assert request.scheduled_for is not None
            # 0 for a run published ahead of its instant.
            FIRE_DELAY.observe(max(0.0, (published_at - request.scheduled_for).total_seconds()))
            FIRES.labels(definition=request.definition).inc()

    def _sync(self, now: datetime) -> None:
        """(Re)compute the next due instant of new and edited definitions (skipped when none changed, at most for
        :data:`FULL_SYNC_EVERY`)."""
        fingerprint = self.definitions.definitions_fingerprint()
        if fingerprint == self._fingerprint and self._full_sync_due is not None and now < self._full_sync_due:
            return
        self._full_sync_due = now + FULL_SYNC_EVERY
        states = []
        for sync in self.scheduling.schedules_to_sync():
            for counter in (FIRES, MISSED, SKIPPED):  # at 0 from the start: increase() sees the first one
                counter.labels(definition=sync.definition.name)
            anchor = anchor_for(sync.handled_until, sync.updated_at, now)
            schedule = sync.definition.schedule
            upcoming = _isolated(sync.definition.name, partial(next_due_after, schedule, anchor), None)
            states.append(ScheduleState(sync.definition_id, sync.version, anchor, upcoming))
            log.debug(
                "schedule synced",
                definition=sync.definition.name,
                enabled=schedule.enabled,
                cron=schedule.cron,
                timezone=schedule.timezone,
                next_due=upcoming.isoformat() if upcoming else None,
            )
        self.scheduling.save_schedules(states)
        self._fingerprint = fingerprint
        SCHEDULED_DEFINITIONS.set(self.scheduling.scheduled_count())
        if states:
            log.info("schedules synced", definitions=len(states))

    def _act(
        self, due: DueSchedule, decision: Plan, active: uuid.UUID | None
    ) -> tuple[list[RunRequested], list[Outgoing]]:
        """The run request to publish (or the skipped record), and the missed records, of one decision.

        ``active`` is a run of the definition still going, when its overlap policy is skip.
        """
        definition = due.definition
        records: list[Outgoing] = []
        for instant in decision.missed:
            run_id = scheduled_run_id(due.definition_id, instant)
            missed = RunMissed(
                run_id=run_id,
                definition=definition.name,
                scheduled_for=instant,
                reason=f"due at {instant.isoformat()} while no scheduler could fire it "
                f"(catch-up window {self.catch_up.total_seconds():.0f}s)",
            )
            records.append(Outgoing(self.topics.run_events, str(run_id), missed.to_bytes()))
            MISSED.labels(definition=definition.name).inc()
        if decision.missed:
            log.warning("scheduled runs missed", definition=definition.name, missed=len(decision.missed))
        if decision.fire is None:
            return [], records
        run_id = scheduled_run_id(due.definition_id, decision.fire)
        if active is not None:
            skipped = RunSkipped(
                run_id=run_id,
                definition=definition.name,
                scheduled_for=decision.fire,
                reason=f"previous run {active} was still active",
            )
            SKIPPED.labels(definition=definition.name).inc()
            log.info("scheduled run skipped", definition=definition.name, run_id=str(run_id), active_run=str(active))
            return [], [*records, Outgoing(self.topics.run_events, str(run_id), skipped.to_bytes())]
        request = RunRequested(
            run_id=run_id,
            definition=definition.name,
            trigger=Trigger.SCHEDULE,
            # By the scheduler's clock, as its instant: requested before it means published ahead of it.
            requested_at=self.clock.now(),
            requested_by="scheduler",
            scheduled_for=decision.fire,
            definition_id=due.definition_id,  # a run published ahead is judged against it (renamed or not)
        )
        # One debug line per run (an info line each cost ~25 µs x 4,000 at a burst); _publish logs the count.
        log.debug(
            "run requested", definition=definition.name, run_id=str(run_id), scheduled_for=decision.fire.isoformat()
        )
        # Each run its own trace, started here and carried by the request's traceparent header.
        trace_headers = new_trace(
            f"send {self.topics.run_requests}",
            {
                "member_export.run_id": str(run_id),
                "member_export.definition": definition.name,
                "member_export.trigger": "schedule",
            },
        )
        outgoing = Outgoing(self.topics.run_requests, str(run_id), request.to_bytes(), trace_headers)
        return [request], [*records, outgoing]
