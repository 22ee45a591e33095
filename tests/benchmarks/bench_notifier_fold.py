"""Benchmark: the notifier's fold of batch outcomes, one transaction per event vs one per poll.

Prints events/s for both on SQLite and on a throwaway PostgreSQL, and their ratio (same run, same
events). Not a test: figures only. ``python -m tests.benchmarks.bench_notifier_fold [--events N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from devtools.postgres import LocalPostgres
from shared.catalog import CatalogStores
from shared.events import AnyRunEvent, BatchOutcome, ExtractionCompleted, RunStarted, Trigger

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


def report(backend: str, one: float, poll: float) -> None:
    print(f"  {backend + ':':<12}one by one {one:8.0f} events/s   per poll {poll:8.0f} events/s   {poll / one:5.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5_000)
    args = parser.parse_args()
    events = run_events(args.events)
    print(f"notifier fold, {len(events)} run events (batch outcomes of 10 runs), polls of {POLL}")
    with tempfile.TemporaryDirectory() as work:
        one, poll = measure(lambda: f"sqlite:///{Path(work) / uuid.uuid4().hex}.db", events)
        report("SQLite", one, poll)
        with LocalPostgres() as server:
            one, poll = measure(lambda: server.create_database(f"b{uuid.uuid4().hex[:8]}"), events)
            report("PostgreSQL", one, poll)


if __name__ == "__main__":
    main()
