"""Composition root of the scheduler: ``python -m services.scheduler`` or ``export-scheduler``."""

from __future__ import annotations

from shared.process_start import begin_service_process

# First, before the imports (a second and more on a busy node): SIGUSR1 blocked before an import starts a thread,
# and SIGTERM or SIGINT ends the process with status 0 from here on, not 143 (shared.process_start).
begin_service_process()

from datetime import timedelta
from functools import partial

import structlog

from services.scheduler.clock import Clock, SystemClock
from services.scheduler.scheduling import LEASE_NAME, Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.catalog import CatalogStores
from shared.kafka import make_producer, produce_and_wait
from shared.kafka.clients import close_producer
from shared.kafka.loop import is_interruption
from shared.outages import describe, is_outage
from shared.runtime import STALL_MARGIN_SECONDS, start_service
from shared.shutdown import stop_gracefully

SERVICE = "scheduler"


def main(clock: Clock | None = None) -> None:
    """Run the scheduler until SIGTERM or SIGINT; ``clock`` is the real one unless a test gives its own."""
    settings = SchedulerSettings()
    health = start_service(settings, SERVICE)
    # A tick waits at most for its runs' acknowledgements (the producer's delivery timeout).
    health.stall_seconds = settings.kafka_delivery_timeout_ms / 1000 + STALL_MARGIN_SECONDS
    log = structlog.get_logger(SERVICE)
    producer = make_producer(settings, SERVICE)

    stores = CatalogStores.from_url(settings.catalog_url)
    scheduler = Scheduler(
        scheduling=stores.scheduling,
        definitions=stores.definitions,
        runs=stores.runs,
        clock=clock or SystemClock(),
        topics=settings.topics,
        publish=partial(produce_and_wait, producer),
        replica_id=settings.scheduler_replica_id,
        lease_seconds=settings.scheduler_lease_seconds,
        catch_up=timedelta(seconds=settings.scheduler_catch_up_seconds),
        lookahead=timedelta(seconds=settings.scheduler_lookahead_seconds),
    )
    stopping = stop_gracefully()  # SIGTERM or SIGINT: the tick in hand finishes, then the loop ends
    log.info(
        "scheduler started",
        tick_seconds=settings.scheduler_tick_seconds,
        lookahead_seconds=settings.scheduler_lookahead_seconds,
        replica=settings.scheduler_replica_id,
    )
    while not stopping.is_set():
        health.beat()
        try:
            scheduler.tick()
        except Exception as exc:
            if is_outage(exc) or is_interruption(exc):  # the catalog or the broker away: the next tick catches up
                log.warning("scheduler tick interrupted: a dependency is away", error=describe(exc))
                health.waiting(describe(exc))
            else:
                log.exception("scheduler tick failed")
        else:
            health.recovered()
        stopping.wait(settings.scheduler_tick_seconds)
    stores.scheduling.release_lease(LEASE_NAME, settings.scheduler_replica_id)
    close_producer(producer)  # the tick waited for its records: nothing is held unless it ended by an error
    log.info("scheduler stopped")


if __name__ == "__main__":
    main()
