"""One scheduler tick: find the definitions that are due and publish their run requests."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from prometheus_client import Counter, Gauge

from services.scheduler.clock import Clock
from services.scheduler.schedule_math import due_instants, scheduled_run_id
from shared.catalog import Catalog
from shared.events import RunRequested, Trigger
from shared.kafka import Outgoing
from shared.topics import Topics

log = structlog.get_logger(__name__)

FIRES = Counter("export_scheduler_fires_total", "Scheduled runs requested.")
SCHEDULED_DEFINITIONS = Gauge("export_scheduler_definitions", "Definitions with an enabled schedule.")


class Scheduler:
    """Evaluates every enabled schedule against ``clock`` and publishes what is due."""

    def __init__(
        self, *, catalog: Catalog, clock: Clock, topics: Topics, publish: Callable[[list[Outgoing]], None]
    ) -> None:
        self.catalog = catalog
        self.clock = clock
        self.topics = topics
        self.publish = publish

    def tick(self) -> list[RunRequested]:
        """Fire what is due now; return the requests published.

        A definition seen for the first time starts from now (nothing in its past fires). When several
        instants passed since the last tick, the latest one fires.
        """
        now = self.clock.now()
        fired: list[RunRequested] = []
        definitions = self.catalog.scheduled_definitions()
        SCHEDULED_DEFINITIONS.set(len(definitions))
        for definition_id, definition in definitions:
            last = self.catalog.last_due(definition.name)
            if last is None:
                self.catalog.set_last_due(definition.name, now)
                continue
            assert definition.schedule.cron is not None  # enabled schedules have one (validated)
            due = due_instants(definition.schedule.cron, definition.schedule.timezone, last, now)
            if not due:
                continue
            latest = due[-1]
            request = RunRequested(
                run_id=scheduled_run_id(definition_id, latest),
                definition=definition.name,
                trigger=Trigger.SCHEDULE,
                requested_by="scheduler",
                scheduled_for=latest,
            )
            # Published before the state moves on: a crash in between fires again with the same run id,
            # which the extractor ignores.
            self.publish([Outgoing(self.topics.run_requests, str(request.run_id), request.to_bytes())])
            self.catalog.set_last_due(definition.name, latest)
            FIRES.inc()
            log.info(
                "run requested",
                definition=definition.name,
                run_id=str(request.run_id),
                scheduled_for=latest.isoformat(),
                skipped_instants=len(due) - 1,
            )
            fired.append(request)
        return fired
