"""Scheduler benchmark: 10,000 enabled definitions, real Kafka, a SQLite and a PostgreSQL catalog.

Two parts, each beside a baseline measured in the same run.

**The scheduler alone** (10,000 definitions, 30 simulated minutes), once without lookahead and once with
(``--lookaheads``): the cost of a tick (idle and at the busiest instant, against a bare kafka-python producer
sending the same requests) and the publish-side delay of every run: from its due instant to the end of the publish
that carried it, negative when published ahead. The clock is simulated and moves as the service's loop does: a
tick, then a second's wait (so a tick that takes 4 s is followed by one 5 s later).

**What a user sees** (:mod:`tests.benchmarks.scheduler_starts`): a burst of ``--burst`` definitions due at the
same second, the scheduler ticking on the real clock and the extractor as a process: the fire delay is from the
due instant to the run's start (its ``run.started`` event, the run record's started time), for a bare producer
publishing the requests at the instant, the scheduler without lookahead, and with it.

    .venv/bin/python -m tests.benchmarks.bench_scheduler [--definitions 10000] [--minutes 30] [--burst 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from services.scheduler.clock import ManualClock
from services.scheduler.scheduling import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition
from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.log import configure_logging
from shared.settings import CommonSettings
from tests.benchmarks.common import bare_produce, kafka_bootstrap, new_topic, postgres_databases
from tests.benchmarks.scheduler_starts import bench_starts

UTC = dt.UTC
START = dt.datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
#: The service's pause between two ticks (EXPORT_SCHEDULER_TICK_SECONDS).
TICK_SECONDS = 1.0
#: Instants with fewer runs due are ordinary ones (the others are the aligned bursts).
ORDINARY_RUNS = 500


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


@dataclass
class Ticks:
    """One simulation's figures: tick durations, the busiest tick, each run's publish-side delay (s)."""

    lookahead: float
    idle: list[float]
    busiest_seconds: float
    busiest_runs: int
    delays: list[float]
    burst_delays: list[float]
    ordinary_delays: list[float]
    fired: int


def simulate(catalog_url: str, bootstrap: str, count: int, minutes: int, lookahead: float) -> Ticks:
    """Run the scheduler over ``minutes`` simulated minutes on a fresh catalog of ``count`` definitions."""
    catalog = CatalogStores.from_url(catalog_url, migrate=True)
    populate(catalog, count)
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", topic_partitions=6
    )
    ensure_topics(settings, [settings.topics.run_requests, settings.topics.run_events])
    producer = make_producer(settings, "bench-scheduler")
    clock = ManualClock(START)
    published_at: dict[uuid.UUID, float] = {}  # run id -> perf_counter at the end of the publish that carried it

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)
        done = time.perf_counter()
        published_at.update((uuid.UUID(o.key), done) for o in outgoing)

    scheduler = Scheduler(
        scheduling=catalog.scheduling,
        definitions=catalog.definitions,
        runs=catalog.runs,
        clock=clock,
        topics=settings.topics,
        publish=publish,
        lookahead=dt.timedelta(seconds=lookahead),
    )
    scheduler.tick()  # first sight of every definition: the sync
    idle: list[float] = []
    busiest = (0, 0.0)
    delays: list[float] = []
    by_instant: dict[dt.datetime, list[float]] = {}
    fired_total = 0
    end = START + dt.timedelta(minutes=minutes)
    while clock.now() < end:
        tick_start = time.perf_counter()
        tick_time = clock.now()
        fired = scheduler.tick()
        elapsed = time.perf_counter() - tick_start
        if fired:
            busiest = max(busiest, (len(fired), elapsed))
        else:
            idle.append(elapsed)
        for request in fired:
            assert request.scheduled_for is not None
            delay = (tick_time - request.scheduled_for).total_seconds() + published_at[request.run_id] - tick_start
            delays.append(delay)
            by_instant.setdefault(request.scheduled_for, []).append(delay)
        fired_total += len(fired)
        clock.advance(dt.timedelta(seconds=elapsed + TICK_SECONDS))  # the service waits a second after a tick
    producer.close()
    catalog.close()
    burst = max(by_instant.values(), key=len, default=[])
    ordinary = [d for instant in by_instant.values() if len(instant) < ORDINARY_RUNS for d in instant]
    return Ticks(lookahead, idle, busiest[1], busiest[0], delays, burst, ordinary, fired_total)


def bare_publish_seconds(bootstrap: str, count: int) -> float:
    """A bare kafka-python producer (acks=all, lz4) sending ``count`` run requests keyed by run id, acknowledged."""
    requests = [RunRequested(definition=f"def-{i:05d}", scheduled_for=START) for i in range(count)]
    return bare_produce(bootstrap, new_topic(bootstrap), [(str(r.run_id).encode(), r.to_bytes()) for r in requests])


def report(label: str, runs: list[Ticks], bare_seconds: float) -> None:
    for ticks in runs:
        name = f"[{label}, lookahead {ticks.lookahead:g} s]"
        late = [max(0.0, d) for d in ticks.delays]
        ahead = sum(1 for d in ticks.delays if d <= 0)
        print(
            f"{name} idle tick p50 {statistics.median(ticks.idle) * 1000:.1f} ms, "
            f"p99 {percentile(ticks.idle, 0.99) * 1000:.1f} ms; busiest tick {ticks.busiest_seconds:.2f} s for "
            f"{ticks.busiest_runs} runs (bare producer for as many: {bare_seconds:.2f} s -> "
            f"{ticks.busiest_seconds / bare_seconds:.1f}x)"
        )
        print(
            f"{name} {ticks.fired} runs; publish-side fire delay p50 {percentile(late, 0.5):.3f} s, "
            f"p99 {percentile(late, 0.99):.3f} s; {ahead} ({ahead / max(1, len(late)):.0%}) published before "
            f"their instant; busiest instant ({len(ticks.burst_delays)} runs): last published at the instant "
            f"{max(ticks.burst_delays, default=0):+.2f} s"
        )
        ordinary = [max(0.0, d) for d in ticks.ordinary_delays]
        print(
            f"{name} the {len(ordinary)} runs due at instants with fewer than {ORDINARY_RUNS} runs: publish-side "
            f"fire delay p50 {percentile(ordinary, 0.5):.3f} s, p99 {percentile(ordinary, 0.99):.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--definitions", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument(
        "--lookaheads",
        type=float,
        nargs="+",
        default=[0.0, SchedulerSettings.model_fields["scheduler_lookahead_seconds"].default],
    )
    parser.add_argument("--burst", type=int, default=200, help="runs due at one instant in the user-visible part")
    parser.add_argument("--extractors", type=int, default=1, help="extractor processes in the user-visible part")
    parser.add_argument("--catalog", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--part", choices=["scheduler", "starts", "both"], default="both")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        catalogs: list[tuple[str, Callable[[], str]]] = []
        if args.catalog in {"sqlite", "both"}:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            catalogs.append(("sqlite", lambda: f"sqlite:///{directory}/catalog-{uuid.uuid4().hex[:6]}.db"))
        if args.catalog in {"postgresql", "both"}:
            create_database = postgres_databases(stack)
            catalogs.append(("postgresql", lambda: create_database(f"bench_{uuid.uuid4().hex[:6]}")))
        for label, new_catalog in catalogs:
            if args.part in {"scheduler", "both"}:
                started = time.perf_counter()
                runs = [
                    simulate(new_catalog(), bootstrap, args.definitions, args.minutes, lookahead)
                    for lookahead in args.lookaheads
                ]
                bare = bare_publish_seconds(bootstrap, max(t.busiest_runs for t in runs) or 1)
                print(f"[{label}] {len(runs)} simulations in {time.perf_counter() - started:.0f} s")
                report(label, runs, bare)
            if args.part in {"starts", "both"}:
                bench_starts(
                    label,
                    new_catalog(),
                    bootstrap,
                    burst=args.burst,
                    extractors=args.extractors,
                    lookahead=max(args.lookaheads),
                    definitions=args.definitions,
                )


if __name__ == "__main__":
    main()
