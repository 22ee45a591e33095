"""One scheduler tick: hold the lease, sync edited schedules, fire what is due, record what was missed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.scheduler.clock import Clock
from services.scheduler.planning import Plan, anchor_for, plan, scheduled_run_id
from shared.catalog import Catalog
from shared.catalog.repository import DueSchedule, ScheduleAdvance, ScheduleState
from shared.domain.schedule import Overlap, fire_times
from shared.events import RunMissed, RunRequested, RunSkipped, Trigger
from shared.kafka import Outgoing
from shared.topics import Topics

log = structlog.get_logger(__name__)

LEASE_NAME = "scheduler"

FIRES = Counter("export_scheduler_fires_total", "Scheduled runs requested.")
FIRE_DELAY = Histogram(
    "export_scheduler_fire_delay_seconds",
    "From a run's due instant to its request being published.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
MISSED = Counter("export_scheduler_missed_total", "Scheduled runs recorded as missed.")
SKIPPED = Counter("export_scheduler_skipped_total", "Scheduled runs skipped: the previous run was active.")
SCHEDULED_DEFINITIONS = Gauge("export_scheduler_definitions", "Definitions with an enabled schedule.")
LEADER = Gauge("export_scheduler_leader", "1 while this replica holds the scheduling lease.")


class Scheduler:
    """Evaluates schedules against ``clock``; only the replica holding the lease acts."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        clock: Clock,
        topics: Topics,
        publish: Callable[[list[Outgoing]], None],
        replica_id: str = "scheduler",
        lease_seconds: float = 15.0,
        catch_up: timedelta = timedelta(hours=1),
    ) -> None:
        self.catalog = catalog
        self.clock = clock
        self.topics = topics
        self.publish = publish
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self.catch_up = catch_up
        self.enabled_count = 0

    def tick(self) -> list[RunRequested]:
        """Fire what is due now, if this replica leads; return the requests published."""
        now = self.clock.now()
        leading = self.catalog.acquire_lease(LEASE_NAME, self.replica_id, now, self.lease_seconds)
        LEADER.set(1 if leading else 0)
        if not leading:
            return []
        self._sync(now)
        due = self.catalog.due_schedules(now)
        busy = self.catalog.active_runs(
            [d.definition.name for d in due if d.definition.schedule.overlap == Overlap.SKIP]
        )
        outgoing: list[Outgoing] = []
        fired: list[RunRequested] = []
        advances: list[ScheduleAdvance] = []
        for schedule in due:
            decision = plan(
                schedule.definition.schedule, handled_until=schedule.handled_until, now=now, catch_up=self.catch_up
            )
            requests, records = self._act(schedule, decision, busy.get(schedule.definition.name))
            fired += requests
            outgoing += records
            advances.append(ScheduleAdvance(schedule.definition_id, schedule.handled_until, now, decision.next_due))
        # Published before the schedules move on: a crash in between fires again with the same run ids,
        # which the extractor ignores.
        if outgoing:
            self.publish(outgoing)
        for request in fired:
            assert request.scheduled_for is not None
            FIRE_DELAY.observe(max(0.0, (self.clock.now() - request.scheduled_for).total_seconds()))
        FIRES.inc(len(fired))
        self.catalog.advance_schedules(advances)
        return fired

    def _sync(self, now: datetime) -> None:
        """(Re)compute the next due instant of new and edited definitions."""
        states = []
        for sync in self.catalog.schedules_to_sync():
            anchor = anchor_for(sync.handled_until, sync.updated_at, now)
            schedule = sync.definition.schedule
            upcoming = fire_times(schedule, anchor, limit=1) if schedule.enabled else []
            states.append(ScheduleState(sync.definition_id, sync.version, anchor, upcoming[0] if upcoming else None))
            log.debug(
                "schedule synced",
                definition=sync.definition.name,
                enabled=schedule.enabled,
                cron=schedule.cron,
                timezone=schedule.timezone,
                next_due=upcoming[0].isoformat() if upcoming else None,
            )
        self.catalog.save_schedules(states)
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
            MISSED.inc()
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
            SKIPPED.inc()
            log.info("scheduled run skipped", definition=definition.name, run_id=str(run_id), active_run=str(active))
            return [], [*records, Outgoing(self.topics.run_events, str(run_id), skipped.to_bytes())]
        request = RunRequested(
            run_id=run_id,
            definition=definition.name,
            trigger=Trigger.SCHEDULE,
            requested_by="scheduler",
            scheduled_for=decision.fire,
        )
        log.info(
            "run requested", definition=definition.name, run_id=str(run_id), scheduled_for=decision.fire.isoformat()
        )
        return [request], [*records, Outgoing(self.topics.run_requests, str(run_id), request.to_bytes())]
