"""Attempt inspector benchmark (issue 16): the dispatcher process with the inspector off, on with its default
sampling, on sampling every attempt (the newest 50 kept), and on keeping every attempt (every request copied,
masked and written to the catalog: ``EXPORT_INSPECTOR_KEEP`` raised to 10,000), in the same run, on the same
Kafka and the same lean receiver, with the one-member template (one request per member: the most attempts per
member, the inspector's worst case). Rates are the receiver's (first request to last). Off runs first and
again last: the gap between the two is the machine's noise.

    .venv/bin/python -m tests.benchmarks.bench_inspector [--single 10000] [--concurrency 8]

``KAFKA_BOOTSTRAP_SERVERS`` reuses a running broker; otherwise a local one is started.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from devtools.kafka_broker import LocalKafka
from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.catalog import CatalogStores
from tests.benchmarks.bench_dispatcher import Bench, batches
from tests.benchmarks.common import receiver_rate
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


def _kept(bench: Bench) -> int:
    catalog = CatalogStores.from_url(bench.catalog_url)
    try:
        return len(catalog.attempts.attempts("bench", limit=100_000))
    finally:
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=10_000, help="one-member requests per contender")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack.enter_context(LocalKafka()).bootstrap_servers
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bench = Bench(bootstrap, workdir, args.concurrency)
        records = batches("single", -(-args.single // DEFAULT_RECORD_MEMBERS), DEFAULT_RECORD_MEMBERS)
        count = sum(len(r.members) for r in records)
        rates: list[tuple[str, float, float, int]] = []
        with lean_receiver() as base_url:
            bench.point_templates_at(base_url)
            for name, settings in CONTENDERS:
                bench.extra_env = settings
                before = _kept(bench)
                stats, peak = bench.run_dispatcher(base_url, records, count)
                rates.append((name, receiver_rate(stats), peak, _kept(bench) - before))
        baseline = rates[0][1]
        print(f"one-member template, {count:,} requests in records of 64, concurrency {args.concurrency}:")
        for name, rate, peak, kept in rates:
            print(
                f"  {name:<34} {rate:>8,.0f} requests/s  {rate / baseline:.2f}x off; peak RSS {peak:.0f} MB; "
                f"{kept:+,} attempts in the catalog (net of pruning)"
            )


if __name__ == "__main__":
    main()
