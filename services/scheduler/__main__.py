"""Composition root of the scheduler: ``python -m services.scheduler`` or ``export-scheduler``."""

from __future__ import annotations

import signal
import threading

import structlog

from services.scheduler.clock import SystemClock
from services.scheduler.scheduling import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.catalog import Catalog
from shared.kafka import Outgoing, make_producer
from shared.kafka.clients import produce_and_wait
from shared.runtime import start_service

SERVICE = "scheduler"


def main() -> None:
    settings = SchedulerSettings()
    start_service(settings, SERVICE)
    log = structlog.get_logger(SERVICE)
    producer = make_producer(settings, SERVICE)

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)

    scheduler = Scheduler(
        catalog=Catalog.from_url(settings.catalog_url), clock=SystemClock(), topics=settings.topics, publish=publish
    )
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log.info("scheduler started", tick_seconds=settings.scheduler_tick_seconds)
    while not stopping.is_set():
        try:
            scheduler.tick()
        except Exception:
            log.exception("scheduler tick failed")
        stopping.wait(settings.scheduler_tick_seconds)
    producer.flush()
    producer.close()
    log.info("scheduler stopped")


if __name__ == "__main__":
    main()
