"""Scheduler benchmark: 10,000 enabled definitions, real Kafka, a SQLite and a PostgreSQL catalog.

Prints the cost of a tick (idle and at the busiest instant) and the fire delay p50/p99 of a scheduler
ticking every second, beside a raw baseline measured in the same run: computing each definition's next
instant with croniter and producing the same run requests with a bare kafka-python producer.

Fire delay is measured on a simulated clock advanced one second per tick: for each fired run, the delay
is (simulated tick time - due instant) + the real time the tick took until its requests were published.

    .venv/bin/python -m tests.benchmarks.bench_scheduler [--definitions 10000] [--minutes 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
import uuid
from contextlib import ExitStack

from croniter import croniter
from kafka import KafkaProducer

from devtools.kafka_broker import LocalKafka
from devtools.postgres import LocalPostgres
from services.scheduler.clock import ManualClock
from services.scheduler.scheduling import Scheduler
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition
from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.log import configure_logging
from shared.settings import CommonSettings

UTC = dt.UTC
START = dt.datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def schedules(rng: random.Random) -> dict[str, object]:
    kind = rng.choices(["15min", "30min", "hour", "day", "week", "cron"], [25, 15, 25, 20, 10, 5])[0]
    repeat: dict[str, object] = {"every": kind}
    if kind == "hour":
        repeat["minute"] = rng.randrange(60)
    elif kind in {"day", "week"}:
        repeat["time"] = f"{rng.randrange(24):02d}:{rng.choice([0, 15, 30, 45]):02d}"
        if kind == "week":
            repeat["weekday"] = rng.choice(["mon", "wed", "fri"])
    elif kind == "cron":
        repeat = {"cron": f"{rng.randrange(60)} */2 * * *"}
    return {"enabled": True, "timezone": rng.choice(ZONES), "repeat": repeat}


def populate(catalog: CatalogStores, count: int) -> list[ExportDefinition]:
    rng = random.Random(7)
    definitions = [
        ExportDefinition.model_validate(
            {"name": f"def-{i:05d}", "query": "q", "template": "t", "schedule": schedules(rng)}
        )
        for i in range(count)
    ]
    for definition in definitions:
        catalog.definitions.apply(definition)
    return definitions


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def bench(label: str, catalog_url: str, bootstrap: str, count: int, minutes: int) -> None:
    catalog = CatalogStores.from_url(catalog_url, migrate=True)
    started = time.perf_counter()
    definitions = populate(catalog, count)
    print(f"[{label}] {count} definitions written in {time.perf_counter() - started:.1f}s")
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", topic_partitions=6
    )
    ensure_topics(settings, [settings.topics.run_requests, settings.topics.run_events])
    producer = make_producer(settings, "bench-scheduler")
    clock = ManualClock(START)
    publish_done: list[float] = []

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)
        publish_done.append(time.perf_counter())

    scheduler = Scheduler(
        scheduling=catalog.scheduling,
        definitions=catalog.definitions,
        runs=catalog.runs,
        clock=clock,
        topics=settings.topics,
        publish=publish,
    )
    first = time.perf_counter()
    scheduler.tick()  # first sight of every definition: the sync
    sync_seconds = time.perf_counter() - first

    tick_seconds: list[float] = []
    busy_ticks: list[tuple[float, int]] = []
    delays: list[float] = []
    delays_by_tick: list[list[float]] = []
    lags: list[float] = []
    fired_total = 0
    for _ in range(minutes * 60):
        clock.advance(dt.timedelta(seconds=1))
        publish_done.clear()
        tick_start = time.perf_counter()
        fired = scheduler.tick()
        elapsed = time.perf_counter() - tick_start
        tick_seconds.append(elapsed)
        if fired:
            busy_ticks.append((elapsed, len(fired)))
            to_publish = (publish_done[0] if publish_done else time.perf_counter()) - tick_start
            delays_by_tick.append([])
            for request in fired:
                assert request.scheduled_for is not None
                lag = (clock.now() - request.scheduled_for).total_seconds()
                lags.append(lag)
                delays.append(lag + to_publish)
                delays_by_tick[-1].append(lag + to_publish)
        fired_total += len(fired)
    idle = [t for t in tick_seconds if t not in {b for b, _ in busy_ticks}]
    busiest = max(busy_ticks, default=(0.0, 0))

    # Baseline: the same work without the scheduler: next instants by croniter, requests by a bare producer.
    base_start = time.perf_counter()
    for definition in definitions:
        croniter(definition.schedule.cron or "* * * * *", START).get_next(dt.datetime)
    cron_seconds = time.perf_counter() - base_start
    raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    payloads = [RunRequested(definition=d.name).to_bytes() for d in definitions[: busiest[1] or 1]]
    base_start = time.perf_counter()
    futures = [raw.send(settings.topics.run_requests, value=p) for p in payloads]
    for future in futures:
        future.get(timeout=60)
    raw_publish_seconds = time.perf_counter() - base_start
    raw.close()
    producer.close()
    catalog.close()

    print(f"[{label}] first tick (sync of {count} schedules): {sync_seconds * 1000:.0f} ms")
    print(
        f"[{label}] idle tick: p50 {statistics.median(idle) * 1000:.1f} ms, p99 {percentile(idle, 0.99) * 1000:.1f} ms"
    )
    print(
        f"[{label}] busiest tick: {busiest[0] * 1000:.0f} ms for {busiest[1]} fires "
        f"(baseline: bare produce of {busiest[1]} requests {raw_publish_seconds * 1000:.0f} ms "
        f"-> ratio {busiest[0] / raw_publish_seconds:.1f}x)"
    )
    print(f"[{label}] baseline croniter next instant for {count} definitions: {cron_seconds * 1000:.0f} ms")
    print(
        f"[{label}] {fired_total} runs fired in {minutes} simulated minutes; fire delay "
        f"p50 {percentile(delays, 0.5):.3f} s, p99 {percentile(delays, 0.99):.3f} s (target p99 <= 1 s); "
        f"largest simulated lag {max(lags, default=0):.0f} s"
    )
    spread = [delay for tick in delays_by_tick if len(tick) < 500 for delay in tick]
    print(
        f"[{label}] fire delay of the {len(spread)} runs due at instants with fewer than 500 runs: "
        f"p50 {percentile(spread, 0.5):.3f} s, p99 {percentile(spread, 0.99):.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--definitions", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--catalog", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    with ExitStack() as stack:
        kafka = stack.enter_context(LocalKafka())
        if args.catalog in {"sqlite", "both"}:
            directory = stack.enter_context(__import__("tempfile").TemporaryDirectory())
            bench(
                "sqlite", f"sqlite:///{directory}/catalog.db", kafka.bootstrap_servers, args.definitions, args.minutes
            )
        if args.catalog in {"postgresql", "both"}:
            postgres = stack.enter_context(LocalPostgres())
            bench(
                "postgresql", postgres.create_database("bench"), kafka.bootstrap_servers, args.definitions, args.minutes
            )


if __name__ == "__main__":
    main()
