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
from shared.domain.schedule_state import DueSchedule, FiringMark, ScheduleAdvance, ScheduleState, schedule_digest
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
NOT_COMPUTABLE = Gauge(
    "member_export_scheduler_definitions_not_computable",
    "Definitions whose fire times could not be computed, as they are now: not fired until edited (the log line "
    "`schedule not computable` and the admin API's schedule preview name them). The leader's count; 0 elsewhere.",
)
REPUBLISHED = Counter(
    "member_export_scheduler_runs_republished_total",
    "Scheduled run requests published again because their first publication was not confirmed (the scheduler "
    "stopped before moving the schedule on, or the broker failed it): the same run id, run once by the extractor.",
)
LEADER = Gauge("member_export_scheduler_leader", "1 while this replica holds the scheduling lease.")


T = TypeVar("T")


def _isolated(definition: str, compute: Callable[[], T], fallback: T) -> tuple[T, str | None]:
    """``compute()`` (one definition's schedule maths) and None, or ``fallback`` and the error's type when it raises:
    logged with the definition's name and counted, so one definition's schedule never stops the others' (the tick
    carries on). The error's type is kept with the schedule until an edit (the gauge and the admin API say it)."""
    try:
        return compute(), None
    except Exception as exc:  # noqa: BLE001 - whatever one schedule's maths raises, the others still fire
        SCHEDULE_ERRORS.inc()
        log.error("schedule not computable: not due until edited", definition=definition, error=type(exc).__name__)
        return fallback, type(exc).__name__


def _advance(due: DueSchedule, handled_until: datetime) -> ScheduleAdvance:
    """``due`` handled up to ``handled_until``: its next instant is the first after it."""
    upcoming, error = _isolated(
        due.definition.name, lambda: next_due_after(due.definition.schedule, handled_until), None
    )
    return ScheduleAdvance(due.definition_id, due.handled_until, handled_until, upcoming, error)


def _firing(instant: datetime | None) -> Plan:
    """The decision to fire ``instant`` alone (nothing missed: an instant on time, ahead, or published again)."""
    return Plan(fire=instant, missed=[], next_due=None)


def _unconfirmed(due: DueSchedule, now: datetime) -> bool:
    """Whether a tick was publishing ``due``'s run for an instant come by ``now`` and did not move it on after."""
    return due.firing_for is not None and due.firing_for <= now


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
        self._looked_for_errors = False

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
            NOT_COMPUTABLE.set(0)  # the leader counts them
            return []
        self._start_series()
        self._sync(now)
        due = self.scheduling.due_schedules(now + self.lookahead)
        busy = self.runs.active_runs([d.definition.name for d in due if d.definition.schedule.overlap == Overlap.SKIP])
        # A run that would be skipped were it due now is not published ahead: it waits for its instant and is judged
        # then, as without lookahead (a run is published ahead at the first tick that finds its definition idle).
        ahead = [d for d in due if d.next_due_at > now and d.definition.name not in busy]
        current = [d for d in due if d.next_due_at <= now]
        # A run a tick was publishing when it stopped (or whose publication failed), its instant come: its request is
        # published again as it was, whatever its age (it may have run: never recorded missed, nor skipped for being
        # active itself), unless its overlap policy refuses it now (_refusing), and its schedule is planned from that
        # instant on.
        unconfirmed = [d for d in current if _unconfirmed(d, now)]
        withheld = self._withheld_idle(unconfirmed, busy)
        on_time: list[DueSchedule] = []
        late: list[tuple[DueSchedule, datetime]] = []  # each planned from the instant it was handled until
        for d in current:
            if not _unconfirmed(d, now):
                if fires_on_time(d.next_due_at, now, self.catch_up):
                    on_time.append(d)
                else:
                    late.append((d, d.handled_until))
        # On-time schedules fire first, before any schedule maths, to keep the fire delay short; so do the runs
        # published ahead. The extractor judges those again at their instant (services.extractor.scheduled_runs).
        fired = self._fire([(d, _firing(d.next_due_at), busy.get(d.definition.name)) for d in on_time + ahead])
        again = self._fire(
            [(d, _firing(d.firing_for), self._refusing(d, busy, withheld)) for d in unconfirmed], again=True
        )
        advances = [_advance(d, now) for d in on_time]
        # A run published ahead is handled up to its own instant: the next one is the first after it.
        advances += [_advance(d, d.next_due_at) for d in ahead]
        for d in unconfirmed:
            assert d.firing_for is not None
            resumed = _advance(d, d.firing_for)
            if resumed.next_due_at is not None and resumed.next_due_at <= now:
                late.append((d, d.firing_for))  # due again since: planned from it now
            else:
                advances.append(resumed)
        plans = [(d, *self._plan(d, since, now)) for d, since in late]
        late_fired = self._fire([(d, p, busy.get(d.definition.name)) for d, p, _ in plans])
        advances += [ScheduleAdvance(d.definition_id, d.handled_until, now, p.next_due, error) for d, p, error in plans]
        # The schedules move on after their runs are published, which clears the instant each was firing: a crash in
        # between publishes them again (_fire) with the same run ids, which the extractor runs once.
        self.scheduling.advance_schedules(advances)
        if any(a.not_computable for a in advances):
            NOT_COMPUTABLE.set(self.scheduling.not_computable_count())
        return fired + again + late_fired

    def _withheld_idle(self, unconfirmed: list[DueSchedule], busy: dict[str, uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """Of the unconfirmed runs of overlap-skip definitions with no run going now, those an earlier tick withheld
        (:meth:`_refusing`), each with the run that held it off then (one read, none when there are none)."""
        idle = [
            scheduled_run_id(d.definition_id, d.firing_for)
            for d in unconfirmed
            if d.firing_for is not None
            and d.definition.schedule.overlap == Overlap.SKIP
            and d.definition.name not in busy
        ]
        return self.runs.withheld_runs(idle) if idle else {}

    def _refusing(
        self, due: DueSchedule, busy: dict[str, uuid.UUID], withheld: dict[uuid.UUID, uuid.UUID]
    ) -> uuid.UUID | None:
        """The run of ``due``'s definition that its overlap policy (skip) holds against its unconfirmed run, as for
        any run due: another run still going, when the unconfirmed one never started. Its first request may still be
        in Kafka, unread: the run is kept from starting first (:meth:`ActiveRuns.withhold_start`), so that request
        starts nothing and the run is only recorded skipped. One an extractor claimed first (running, finished, or
        judged at its instant) is published again as it was: the extractor ignores a run id it claimed.

        A run an earlier tick withheld stays skipped once the other run has ended (``withheld``: the run that held it
        off then): its skipped record was not published (the broker failed it, or the scheduler stopped) and is
        published now. Published again instead, its request would be ignored and the run have no record at all."""
        if due.firing_for is None:
            return None
        run_id = scheduled_run_id(due.definition_id, due.firing_for)
        active = busy.get(due.definition.name)
        if active is None:
            return withheld.get(run_id)
        return None if active == run_id or not self.runs.withhold_start(run_id, due.definition.name, active) else active

    def _plan(self, due: DueSchedule, since: datetime, now: datetime) -> tuple[Plan, str | None]:
        return _isolated(
            due.definition.name,
            lambda: plan(due.definition.schedule, handled_until=since, now=now, catch_up=self.catch_up),
            Plan(fire=None, missed=[], next_due=None),
        )

    def _fire(
        self, decisions: list[tuple[DueSchedule, Plan, uuid.UUID | None]], *, again: bool = False
    ) -> list[RunRequested]:
        """Act on ``decisions`` (each with its definition's active run, under the skip policy) and publish their
        records, the instant of each run requested recorded first (:meth:`SchedulingStore.mark_firing`): a
        publication not confirmed by the schedule moving on is published ``again``, never recorded missed (counted
        apart: not a fire, nor its delay)."""
        fired: list[RunRequested] = []
        outgoing: list[Outgoing] = []
        marks: list[FiringMark] = []
        for due, decision, active in decisions:
            requests, records = self._act(due, decision, active)
            fired += requests
            outgoing += records
            marks += [
                FiringMark(due.definition_id, due.handled_until, r.scheduled_for) for r in requests if r.scheduled_for
            ]
        self.scheduling.mark_firing(marks)
        if not again:
            self._publish(fired, outgoing)
        elif outgoing:
            self.publish(outgoing)
            if fired:
                REPUBLISHED.inc(len(fired))
                log.warning(
                    "scheduled run requests published again: their publication was not confirmed", runs=len(fired)
                )
        return fired

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
            schedule = sync.definition.schedule
            digest = schedule_digest(schedule)
            # An edit that left the schedule as it was (a rename, another field) keeps its place: from where it was
            # handled (the instants due since fire or are recorded missed), and the instant it was publishing.
            kept = sync.handled_until if sync.schedule_digest == digest else None
            anchor = kept or anchor_for(sync.handled_until, sync.updated_at, now)
            firing_for = sync.firing_for if kept else None
            upcoming, error = _isolated(sync.definition.name, partial(next_due_after, schedule, anchor), None)
            states.append(ScheduleState(sync.definition_id, sync.version, anchor, upcoming, error, digest, firing_for))
            log.debug(
                "schedule synced",
                definition=sync.definition.name,
                enabled=schedule.enabled,
                cron=schedule.cron,
                timezone=schedule.timezone,
                next_due=upcoming.isoformat() if upcoming else None,
            )
        self.scheduling.save_schedules(states)
        if not self._looked_for_errors:  # once per process: those the scheduler has seen since keep their error
            self._looked_for_errors = True
            self.scheduling.save_schedules(self._not_computable_kept_nowhere())
        self._fingerprint = fingerprint
        SCHEDULED_DEFINITIONS.set(self.scheduling.scheduled_count())
        NOT_COMPUTABLE.set(self.scheduling.not_computable_count())
        if states:
            log.info("schedules synced", definitions=len(states))

    def _not_computable_kept_nowhere(self) -> list[ScheduleState]:
        """The schedules with no next instant whose fire times cannot be computed, their error now kept (states as
        they were otherwise). A catalog upgraded to migration 0021 kept no error for those that failed before: the
        gauge did not count them, nor the schedule preview name them, until their definition was edited."""
        states = []
        for sync in self.scheduling.schedules_without_next():
            assert sync.handled_until is not None
            schedule = sync.definition.schedule
            _, error = _isolated(sync.definition.name, partial(next_due_after, schedule, sync.handled_until), None)
            if error is not None:
                states.append(
                    ScheduleState(
                        sync.definition_id, sync.version, sync.handled_until, None, error, sync.schedule_digest
                    )
                )
        return states

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
        # The active run may be this one: its request published before (a publication not confirmed, fired again).
        if active is not None and active != run_id:
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
