"""Where a small run's start costs its time in the extractor, Kafka aside: ``Extractor.handle`` by stage.

A burst of scheduled runs (issue 18) is started one run at a time; ``bench_scheduler --burst`` measures the rate
(15-22 runs a second, 50-60 ms a run, Kafka included). This benchmark takes Kafka out: ``--runs`` runs of a
three-member query, each through ``Extractor.handle`` on a SQLite catalog and a SQLite member store, with the
records it sends acknowledged at once. Each stage's wall time is exclusive (a catalog call inside the member
read counts as the catalog's). What is left of a run's time in ``bench_scheduler`` is Kafka's: the three
acknowledgements a run waits for (``run.started``, its batch, ``extraction.completed``), the consumer's poll and
commit.

In the same run, in alternating rounds: the reader as it is (the statements around a query cached from run to
run) and the reader building them each run, as before; the baseline is a plain ``sqlite3`` cursor reading the
same three members. With ``--before DIR ...``, instead: this code and copies of the code before
(``git archive <commit> services shared | tar -x -C DIR``), each round of each in a process of its own run with
``PYTHONPATH`` (this file's stages are timed where the code has them).

    .venv/bin/python -m tests.benchmarks.bench_run_start [--runs 300] [--rounds 3] [--before DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.extractor.extraction import Extractor
from services.extractor.scheduled_runs import StartTimes
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RunRequested, Trigger, utc_now
from shared.kafka import InFlight, Outgoing
from shared.log import configure_logging
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings

SQL = "SELECT id, email FROM members WHERE id <= 3"


class Stages:
    """Exclusive wall time per stage: a stage called inside another is taken out of the outer one's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner: list[float] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute, None)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[label] += elapsed - self._inner.pop()
                self.calls[label] += 1
                if self._inner:
                    self._inner[-1] += elapsed

        setattr(owner, attribute, timed)

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class _Uncached:
    """The reader's statement cache turned off: every statement built and compiled at each run, as before."""

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        return build()


def _acknowledged(_outgoing: list[Outgoing]) -> InFlight:
    return InFlight([], timeout_seconds=1.0)


def _extractor(catalog: CatalogStores, store_url: str, cached: bool, stages: Stages) -> Extractor:
    reader = MemberReader.from_url(store_url)
    if not cached:
        reader._statements = _Uncached()  # type: ignore[assignment]
    extractor = Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=reader,
        topics=CommonSettings().topics,
        send=_acknowledged,
        page_size=5_000,
        retries=catalog.retries,
        start_times=StartTimes(max_wait=timedelta(seconds=60)),
        range_members=250_000,
        other_replicas=lambda: False,
    )
    # Instance attributes: the stores' own methods call them through self, so nested calls are timed too.
    # Those a version of the code lacks are left out (--before: older code, in a process of its own).
    stages.wrap(catalog.definitions, "get_versioned", "catalog: definition, query, template read")
    stages.wrap(catalog.definitions, "run_objects", "catalog: definition, query and template in one read")
    stages.wrap(catalog.extraction, "claim_extraction", "catalog: claim the run (insert + read)")
    stages.wrap(catalog.extraction, "claim_run", "catalog: claim the run (checkpoint, sync, status, retries)")
    stages.wrap(catalog.extraction, "save_checkpoint", "catalog: save the checkpoint")
    stages.wrap(catalog.runs, "get_run", "catalog: cancelled? (run record)")
    stages.wrap(catalog.retries, "claim_retries", "catalog: claim pending retries")
    stages.wrap(catalog.retries, "claimed", "catalog: retries claimed?")
    stages.wrap(extractor, "_extract", "member store: statements, probe, page read, encode")
    stages.wrap(extractor, "handle", "the rest (events, checks, logging, metrics)")
    return extractor


def _requests(names: list[str]) -> list[RunRequested]:
    now = utc_now()
    return [
        RunRequested(
            definition=name, trigger=Trigger.SCHEDULE, requested_by="bench", requested_at=now, scheduled_for=now
        )
        for name in names
    ]


def _baseline_ms(store: Path, runs: int) -> float:
    """A plain sqlite3 connection and cursor reading the run's three members, per run (ms)."""
    started = time.perf_counter()
    for _ in range(runs):
        connection = sqlite3.connect(store)
        connection.execute(SQL).fetchall()
        connection.close()
    return (time.perf_counter() - started) / runs * 1000


def _round(catalog_url: str, store_url: str, names: list[str], cached: bool) -> dict[str, Any]:
    """One round: ``names``' runs (the first to warm up) through one extractor; ms a run, by stage, calls a run."""
    catalog = CatalogStores.from_url(catalog_url)  # fresh stores: their methods wrapped once
    catalog.definitions.apply_all(
        [ExportDefinition.model_validate({"name": n, "query": "few", "template": "t"}) for n in names]
    )
    stages = Stages()
    extractor = _extractor(catalog, store_url, cached, stages)
    first, *burst = _requests(names)
    extractor.handle(first)  # warm: the first run builds what the others reuse
    stages.clear()
    started = time.perf_counter()
    for request in burst:
        extractor.handle(request)
    runs = len(burst)
    result = {
        "ms": (time.perf_counter() - started) / runs * 1000,
        "stages": {label: seconds / runs * 1000 for label, seconds in stages.seconds.items()},
        "calls": {label: count / runs for label, count in stages.calls.items()},
    }
    extractor.reader.close()
    catalog.close()
    return result


def _setup(directory: str) -> tuple[Path, str, str]:
    store = Path(directory) / "members.db"
    store_url = f"sqlite:///{store}"
    engine = make_engine(store_url)
    create_demo_members(engine, 20)
    engine.dispose()
    catalog_url = f"sqlite:///{Path(directory) / 'catalog.db'}"
    setup = CatalogStores.from_url(catalog_url, migrate=True)
    setup.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    setup.definitions.apply(SavedQuery(name="few", sql=SQL))
    setup.definitions.apply(HttpTemplate(name="t", query="few", profile="p", batch_size=100))
    setup.close()
    return store, store_url, catalog_url


def _print_variant(
    variant: str, per_run: list[float], stage_ms: dict[str, list[float]], calls: dict[str, float]
) -> None:
    rounds = ", ".join(f"{ms:.2f}" for ms in per_run)
    print(f"[{variant}] {statistics.median(per_run):.2f} ms a run (rounds: {rounds})")
    for label, values in sorted(stage_ms.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"    {statistics.median(values):6.2f} ms  {calls.get(label, 0.0):4.1f} calls  {label}")


def _compare_code(args: argparse.Namespace) -> None:
    """This code and the copies of the code before, a process each a round, taking turns."""
    here = str(Path(__file__).resolve().parents[2])
    variants = {f"code in {tree.name} (before)": str(tree.resolve()) for tree in args.before} | {"this code": here}
    per_run: dict[str, list[float]] = defaultdict(list)
    stage_ms: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in variants}
    calls: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        _, store_url, catalog_url = _setup(directory)
        for round_index in range(args.rounds):
            for number, (variant, tree) in enumerate(variants.items()):
                names = [f"r{round_index}-v{number}-{i:05d}" for i in range(args.runs + 1)]
                # PYTHONSAFEPATH: neither the working directory nor this file's is put first on the path.
                env = os.environ | {"PYTHONPATH": tree, "PYTHONSAFEPATH": "1"}
                worker = {"catalog_url": catalog_url, "store_url": store_url, "names": names}
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(worker)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                per_run[variant].append(result["ms"])
                for label, ms in result["stages"].items():
                    stage_ms[variant][label].append(ms)
                calls[variant] = result["calls"]
    print(f"{args.runs} runs of 3 members a round, {args.rounds} rounds, SQLite catalog and store, Kafka left out")
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for variant in variants:
        _print_variant(variant, per_run[variant], stage_ms[variant], calls[variant])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="runs a round, each variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--before", type=Path, nargs="*", default=[], help="copies of the code before (services/, shared/): baselines"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one round, in a process of --before's
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    if args.worker:
        worker = json.loads(args.worker)
        print(json.dumps(_round(worker["catalog_url"], worker["store_url"], worker["names"], cached=True)))
        return
    if args.before:
        _compare_code(args)
        return
    with tempfile.TemporaryDirectory() as directory:
        store, store_url, catalog_url = _setup(directory)
        variants = {"statements cached": True, "statements built each run (before)": False}
        per_run: dict[str, list[float]] = defaultdict(list)
        stage_ms: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in variants}
        calls: dict[str, dict[str, float]] = {}
        baselines: list[float] = []
        for round_index in range(args.rounds):
            for variant, cached in variants.items():
                names = [f"r{round_index}-{'c' if cached else 'b'}-{i:05d}" for i in range(args.runs + 1)]
                result = _round(catalog_url, store_url, names, cached)
                per_run[variant].append(result["ms"])
                for label, ms in result["stages"].items():
                    stage_ms[variant][label].append(ms)
                calls[variant] = result["calls"]
            baselines.append(_baseline_ms(store, args.runs))
    print(f"{args.runs} runs of 3 members a round, {args.rounds} rounds, SQLite catalog and store, Kafka left out")
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"baseline (plain sqlite3 read of the 3 members): {statistics.median(baselines):.2f} ms a run")
    for variant in variants:
        _print_variant(variant, per_run[variant], stage_ms[variant], calls[variant])


if __name__ == "__main__":
    main()
