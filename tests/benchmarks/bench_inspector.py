"""Attempt inspector benchmark (issue 16): the dispatcher process with the inspector off, on with its default
sampling, on sampling every attempt (the newest 50 kept), and on keeping every attempt (every request copied,
masked and written to the catalog: ``EXPORT_INSPECTOR_KEEP`` raised to 10,000), in the same run, on the same
Kafka and the same lean receiver, with the one-member template (one request per member: the most attempts per
member, the inspector's worst case). Rates are the receiver's (first request to last). Off runs first and
again last: the gap between the two is the machine's noise.

First, in-process, the witness's own cost per attempt on the event loop (not kept: the sampling draw; kept:
bounded slices into the buffer).

    .venv/bin/python -m tests.benchmarks.bench_inspector [--single 10000] [--rounds 3] [--concurrency 8]

``KAFKA_BOOTSTRAP_SERVERS`` reuses a running broker; otherwise a local one is started.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from services.dispatcher.delivery import AttemptResult
from services.dispatcher.inspector import AttemptInspector
from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import PartnerAnswer
from tests.benchmarks.bench_dispatcher import Bench, batches, member
from tests.benchmarks.common import kafka_bootstrap, receiver_rate
from tests.benchmarks.lean_receiver import lean_receiver

OFF = {"EXPORT_INSPECTOR_ENABLED": "false"}
#: Name, settings; off first and last (the noise), every attempt kept being the worst case.
CONTENDERS = [
    ("inspector off", OFF),
    ("inspector on, default sampling", {}),
    ("inspector on, all sampled, 50 kept", {"EXPORT_INSPECTOR_SUCCESS_SAMPLE": "1.0"}),
    ("inspector on, every attempt kept", {"EXPORT_INSPECTOR_SUCCESS_SAMPLE": "1.0", "EXPORT_INSPECTOR_KEEP": "10000"}),
    ("inspector off (again)", OFF),
]


def _define(bench: Bench) -> None:
    """The definition the batches name: the inspector keeps attempts under its id."""
    catalog = CatalogStores.from_url(bench.catalog_url)
    try:
        catalog.definitions.apply(ExportDefinition(name="bench", query="q", template="single"))
    finally:
        catalog.close()


def _kept(bench: Bench) -> int:
    catalog = CatalogStores.from_url(bench.catalog_url)
    try:
        definition_id = catalog.definitions.get_versioned(ExportDefinition, "bench")[0]
        return len(catalog.attempts.attempts(definition_id, limit=100_000))
    finally:
        catalog.close()


def hot_path(calls: int) -> None:
    """The witness's cost per attempt on the event loop, in-process: an attempt not kept (the sampling draw
    only) and one kept (bounded slices into the buffer), against the deliverer's call without a witness."""
    inspector = AttemptInspector(_NoStore(), success_sample=1e-12, keep=50, max_buffered=10**9)  # a draw, never kept
    profile = ConnectionProfile(name="p", base_url="https://p.example")
    body = json.dumps([member(i) for i in range(1)]).encode()
    request = RenderedRequest("POST", "https://p.example/members", {"Content-Type": "application/json"}, body)
    answer = PartnerAnswer(200, None, b'{"ok": true}', {"Content-Type": "application/json"})
    witness = inspector.watch("bench", profile, uuid.uuid4(), 0)
    ok, refused = AttemptResult(200, True), AttemptResult(503, False)

    def per_call(result: AttemptResult | None) -> float:
        started = time.perf_counter()
        for n in range(calls):
            if result is not None:
                functools.partial(witness, n)(request, answer, result, 0.01)  # as Deliverer.deliver wraps it
        return (time.perf_counter() - started) / calls * 1e6

    empty = per_call(None)
    inspector.flush()
    skipped = per_call(ok) - empty  # the first success of the interval is kept, the rest drawn and skipped
    kept = per_call(refused) - empty  # every failure kept: sliced and buffered (the pair's newest 50)
    print(f"hot path, per attempt ({calls:,} calls): not kept {skipped:.2f} µs, kept {kept:.2f} µs", flush=True)


class _NoStore:
    def add(self, attempts: object, *, keep: int) -> int:
        return 0

    def prune(self, before: object) -> int:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=10_000, help="one-member requests per contender and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every contender (best and median shown)")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    hot_path(200_000)
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bench = Bench(bootstrap, workdir, args.concurrency)
        records = batches("single", -(-args.single // DEFAULT_RECORD_MEMBERS), DEFAULT_RECORD_MEMBERS)
        count = sum(len(r.members) for r in records)
        rates: dict[str, list[float]] = {name: [] for name, _ in CONTENDERS}
        written: dict[str, int] = dict.fromkeys(rates, 0)
        with lean_receiver() as base_url:
            bench.point_templates_at(base_url)
            _define(bench)
            # Contenders interleaved, round after round: a machine busy for a while slows all of them alike.
            for _ in range(args.rounds):
                for name, settings in CONTENDERS:
                    bench.extra_env = settings
                    before = _kept(bench)
                    stats, _peak = bench.run_dispatcher(base_url, records, count)
                    rates[name].append(receiver_rate(stats))
                    written[name] = max(written[name], _kept(bench) - before)
        best_off = max(rates[CONTENDERS[0][0]])
        median_off = statistics.median(rates[CONTENDERS[0][0]])
        print(
            f"one-member template, {count:,} requests in records of 64, concurrency {args.concurrency}, "
            f"{args.rounds} rounds (best, median; ratios to 'inspector off'):",
            flush=True,
        )
        for name, found in rates.items():
            best, median = max(found), statistics.median(found)
            print(
                f"  {name:<36} best {best:>6,.0f} requests/s {best / best_off:.2f}x; median {median:>6,.0f} "
                f"{median / median_off:.2f}x; rows added (net of pruning) up to {written[name]:+,}",
                flush=True,
            )


if __name__ == "__main__":
    main()
