"""Benchmark: the notifier's fold of batch outcomes, one transaction per event vs one per poll; and the
member delivery log's cost: the same poll folds of outcomes naming their members (``--members`` a batch,
1% refused) without and with the log (and the next-run retries) written in the fold, and the log's
lookup of a key (newest batch, oldest batch, a key it does not hold).

Prints events/s on SQLite and on a throwaway PostgreSQL, and the ratios (same run, same events). Not a
test: figures only. ``python -m tests.benchmarks.bench_notifier_fold [--events N] [--members N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from shared.catalog import CatalogStores
from shared.events import AnyRunEvent, BatchOutcome, ExtractionCompleted, RefusedMember, RunStarted, Trigger
from tests.benchmarks.common import postgres_databases
from tests.member_state_helpers import member_state_definition

POLL = 500


def run_events(count: int, runs: int = 10) -> list[AnyRunEvent]:
    events: list[AnyRunEvent] = []
    per_run = count // runs
    for _ in range(runs):
        run_id = uuid.uuid4()
        events.append(RunStarted(run_id=run_id, definition="bench", trigger=Trigger.MANUAL))
        events.append(ExtractionCompleted(run_id=run_id, definition="bench", members=per_run, batches=per_run))
        events += [
            BatchOutcome(run_id=run_id, definition="bench", batch_index=i, delivered=1, failed=0)
            for i in range(per_run)
        ]
    return events


def measure(new_catalog: Callable[[], str], events: list[AnyRunEvent]) -> tuple[float, float]:
    """(events/s one by one, events/s a poll at a time), each on a fresh catalog."""
    rates = []
    for batched in (False, True):
        stores = CatalogStores.from_url(new_catalog(), migrate=True)
        started = time.perf_counter()
        if batched:
            for start in range(0, len(events), POLL):
                stores.runs.fold_run_events(events[start : start + POLL])
        else:
            for event in events:
                stores.runs.fold_run_event(event)
        rates.append(len(events) / (time.perf_counter() - started))
        stores.close()
    return rates[0], rates[1]


def keyed_events(count: int, members: int, runs: int = 10) -> list[AnyRunEvent]:
    """Outcomes of batches of ``members`` members, each naming its members' keys, 1% of them refused (503)."""
    events: list[AnyRunEvent] = []
    per_run = count // runs
    for run in range(runs):
        run_id = uuid.uuid4()
        events.append(RunStarted(run_id=run_id, definition="bench", trigger=Trigger.MANUAL))
        events.append(
            ExtractionCompleted(run_id=run_id, definition="bench", members=per_run * members, batches=per_run)
        )
        for i in range(per_run):
            first = (run * per_run + i) * members
            keys = [str(first + k) for k in range(members)]
            refused = [RefusedMember(key=k, status=503, reason="HTTP 503", attempts=2) for k in keys[::100]]
            events.append(
                BatchOutcome(
                    run_id=run_id,
                    definition="bench",
                    batch_index=i,
                    delivered=members - len(refused),
                    failed=len(refused),
                    member_keys=keys,
                    refused=refused,
                )
            )
    return events


LOG_CONFIGS = ("without", "delivery log", "log + retries")


def measure_log(new_catalog: Callable[[], str], events: list[AnyRunEvent], rounds: int) -> dict[str, Any]:
    """Events/s a poll at a time without and with the per-member followers, on fresh catalogs, the configurations
    taking turns ``rounds`` times; each round's ratios to its own baseline (the machine is shared: a round's
    three folds run back to back, under the same load); the log's lookup times (the fastest of the rounds)."""
    rates: dict[str, list[float]] = {name: [] for name in LOG_CONFIGS}
    lookups: dict[str, float] = {}
    for _ in range(rounds):
        for name in LOG_CONFIGS:
            stores = CatalogStores.from_url(new_catalog(), migrate=True)
            bench_id = member_state_definition(stores, "bench")  # per-member state is keyed by its id
            if name != "without":
                stores.runs.followers.append(stores.deliveries)
            if name == "log + retries":
                stores.runs.followers.append(stores.retries)
            started = time.perf_counter()
            for start in range(0, len(events), POLL):
                stores.runs.fold_run_events(events[start : start + POLL])
            rates[name].append(len(events) / (time.perf_counter() - started))
            if name == "delivery log":
                outcomes = [e for e in events if isinstance(e, BatchOutcome)]
                probes = {
                    "newest": (outcomes[-1].member_keys or [""])[0],
                    "oldest": (outcomes[0].member_keys or [""])[0],
                    "absent": "no-such-member",
                }
                for probe, key in probes.items():
                    started = time.perf_counter()
                    stores.deliveries.last_delivery(bench_id, key)
                    elapsed = (time.perf_counter() - started) * 1000
                    lookups[probe] = min(lookups.get(probe, elapsed), elapsed)
            stores.close()
    ratios = {
        name: statistics.median(r / base for r, base in zip(rates[name], rates["without"], strict=True))
        for name in LOG_CONFIGS
    }
    return {"rates": {name: statistics.median(values) for name, values in rates.items()}, "ratios": ratios} | {
        "lookups": lookups
    }


def report_log(backend: str, figures: dict[str, Any], members: int) -> None:
    rates, ratios, lookups = figures["rates"], figures["ratios"], figures["lookups"]
    print(
        f"  {backend + ':':<12}without {rates['without']:7.0f} events/s   delivery log {rates['delivery log']:7.0f} "
        f"events/s ({ratios['delivery log']:4.2f}x)   log + retries {rates['log + retries']:7.0f} events/s "
        f"({ratios['log + retries']:4.2f}x)   (medians: rates, and each round's ratio to its own baseline)"
    )
    # What the fold's ratio means for a run: the log's added time a member, against a pipeline's time a member.
    added = (1 / ratios["delivery log"] - 1) / rates["without"] / members * 1e6
    print(
        f"  {'':<12}the log adds {added:5.2f} us a member to the fold ({added:4.2f} s a 1M-member run; the pipeline "
        "spends about 11 us a member end to end, docs/benchmarks/e2e.md)"
    )
    print(
        f"  {'':<12}lookup: newest batch {lookups['newest']:6.1f} ms   oldest batch "
        f"{lookups['oldest']:6.1f} ms   absent key {lookups['absent']:6.1f} ms"
    )


def report(backend: str, one: float, poll: float) -> None:
    print(f"  {backend + ':':<12}one by one {one:8.0f} events/s   per poll {poll:8.0f} events/s   {poll / one:5.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=500, help="members a batch outcome names (default: 500)")
    parser.add_argument("--log-events", type=int, default=2_000, help="batch outcomes of the delivery log's folds")
    parser.add_argument("--rounds", type=int, default=5, help="turns of the delivery log's configurations")
    args = parser.parse_args()
    events = run_events(args.events)
    keyed = keyed_events(args.log_events, args.members)
    print(f"notifier fold, {len(events)} run events (batch outcomes of 10 runs), polls of {POLL}")
    with tempfile.TemporaryDirectory() as work:
        one, poll = measure(lambda: f"sqlite:///{Path(work) / uuid.uuid4().hex}.db", events)
        report("SQLite", one, poll)
        with ExitStack() as stack:
            create = postgres_databases(stack)
            one, poll = measure(lambda: create(f"b{uuid.uuid4().hex[:8]}"), events)
            report("PostgreSQL", one, poll)
        print(
            f"member delivery log: the same folds of {len(keyed)} events naming {args.members} members a batch "
            f"({args.log_events * args.members} members, 1% refused), without and with the log in the fold "
            f"({args.rounds} rounds taking turns)"
        )
        sqlite = measure_log(lambda: f"sqlite:///{Path(work) / uuid.uuid4().hex}.db", keyed, args.rounds)
        report_log("SQLite", sqlite, args.members)
        with ExitStack() as stack:
            create = postgres_databases(stack)
            new_database = lambda: create(f"b{uuid.uuid4().hex[:8]}")  # noqa: E731
            report_log("PostgreSQL", measure_log(new_database, keyed, args.rounds), args.members)


if __name__ == "__main__":
    main()
