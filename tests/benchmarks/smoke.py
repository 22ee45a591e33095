"""Every benchmark at a tiny size: each runs to its end and prints its figures (never a timed pass/fail).

A refactor that renames a function or changes a constructor a benchmark uses breaks it unseen otherwise: `make bench`
runs at full size, by hand. Each benchmark here runs as `make bench` runs it (``python -m tests.benchmarks.<name>``,
a process of its own) with its smallest meaningful arguments, and its output must hold its figure lines (the
table's, the ratios'). ``SMOKES`` says which of them the test suite runs
(``tests/integration/test_benchmarks_smoke.py``, on the suite's broker and PostgreSQL) and which only
``make bench-smoke`` runs (this module: every one of them), because they cannot be made small enough for the suite's
time budget.

    python -m tests.benchmarks.smoke [--only bench_rendering bench_e2e] [--list]

One broker and one PostgreSQL are started here and shared by the benchmarks (``KAFKA_BOOTSTRAP_SERVERS``,
``EXPORT_TEST_POSTGRES_URL``; set, they are used instead); ``bench_burst_start`` starts its own broker (it counts
the broker's CPU).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

#: The checkout the benchmarks run from (``python -m`` from here; ``.local/bench`` caches its member stores).
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Smoke:
    """A benchmark's tiny run: its arguments (``{bootstrap}``, ``{prefix}`` and ``{out}`` filled in when run) and the
    figure lines its output must hold (regular expressions, each searched line by line)."""

    name: str
    args: tuple[str, ...]
    figures: tuple[str, ...]
    #: Run by the test suite too; else by `make bench-smoke` only (too long for the suite's budget).
    in_suite: bool = True
    #: Why it is left out of the suite (README and report).
    why_not: str = ""
    #: The `bench` extra's clients (confluent-kafka), which `make test` does not install.
    needs_bench_extra: bool = False
    env: Mapping[str, str] = field(default_factory=dict)

    def argv(self, bootstrap: str, out: Path) -> list[str]:
        """The command: this Python running the benchmark's module with the arguments filled in."""
        values = {"bootstrap": bootstrap, "prefix": f"smoke{uuid.uuid4().hex[:8]}.", "out": str(out)}
        return [sys.executable, "-m", f"tests.benchmarks.{self.name}", *(a.format(**values) for a in self.args)]

    def missing_figures(self, output: str) -> list[str]:
        """The figure patterns ``output`` does not hold (none: the benchmark printed its figures)."""
        return [p for p in self.figures if not re.search(p, output, re.MULTILINE)]


# Sizes: the smallest that still reach every figure line (e.g. bench_batch_polls needs more records than one poll
# takes, bench_scheduler 16 simulated minutes for its every-15-minutes definitions to fire).
SMOKES: tuple[Smoke, ...] = (
    Smoke(
        "bench_delete_in_use",
        ("--definitions", "20", "--deletes", "2"),
        (
            r"^sqlite: 20 definitions made in [\d.]+ s",
            r"^delete refused \(followed, 409\): median [\d.]+ ms",
            r"^delete done \(not followed\): median [\d.]+ ms",
            r"^template saved \(scoped token, 1 definition uses it\): median [\d.]+ ms",
            r"^template deleted \(scoped token, unused\): median [\d.]+ ms",
            r"^definition created \(name from its label\): median [\d.]+ ms",
            r"^definition saved \(follows another\): median [\d.]+ ms",
            r"^migration 0025 \(references filled\): [\d.]+ s",
        ),
    ),
    Smoke(
        "bench_query_save",
        ("--definitions", "20", "--turns", "1"),
        (
            r"^sqlite: 20 definitions on one query made in [\d.]+ s",
            r"^query saved, label only: median [\d.]+ ms",
            r"^query saved, tier made required, no default \(every definition gives it: saved\): median [\d.]+ ms",
            r"^query saved, tier's type changed \(every value binds: saved\): median [\d.]+ ms",
            r"^query saved, a column nothing uses dropped \(saved\): median [\d.]+ ms",
            r"^query saved, tier made a boolean \(every value breaks: 409\): median [\d.]+ ms",
        ),
    ),
    Smoke(
        "bench_batch_decoding",
        ("--members", "1000", "--rounds", "1"),
        (r"^  decode_member_batch \(the dispatcher's\) +median [\d.]+ ms.*\([\d.]+x the model's median\)$",),
    ),
    Smoke(
        "bench_batch_polls",
        ("--records", "140", "--work-ms", "1", "--repeat", "1", "--sizes", "1048576"),
        (r"^max_partition_fetch_bytes +1,048,576: polls waited [\d.]+ s \(\d+ of [1-9]\d* polls\); decoding",),
    ),
    Smoke(
        "bench_burst_start",
        ("--runs", "5", "--turns", "1", "--rounds", "32", "--extractors", "1"),
        (r"^\[sqlite, 1 extractor, start round 32\] runs started a second: median [\d.]+ .*p99 [\d.]+ s",),
        in_suite=False,
        why_not="starts a broker of its own (it counts the broker's CPU) and an extractor process: about 15 s",
    ),
    Smoke(
        "bench_changes",
        ("--members", "2000"),
        (
            r"^full run +2,000 members: .* members/s",
            r"^\[postgresql snapshot\] change run, 20 changed .*x the full run's time\)",
            r"^\[guard\] pass over the keys",
        ),
        in_suite=False,
        why_not="five extractor runs, each a process of its own: about 15 s",
    ),
    Smoke(
        "bench_cli_startup",
        ("--repeat", "1"),
        (
            r"^  exportctl --version +[\d.]+ ms .* [\d.]+x",
            r"^  exportctl run startup +acknowledged +[\d.]+ ms \( *[\d.]+x\)",
        ),
        in_suite=False,
        why_not="about ten exportctl processes (and the bare producer's) even at one round: about 8-10 s",
    ),
    Smoke(
        "bench_dead_letter_listing",
        ("--bootstrap", "{bootstrap}", "--prefix", "{prefix}", "--prepare", "--groups", "20", "--listings", "1"),
        (r'^\{"groups": 20, "seconds": \[[\d.]+\], "topic_reads": \[1\]\}$',),
    ),
    Smoke(
        "bench_dead_letter_kept_page",
        ("--bootstrap", "{bootstrap}", "--definitions", "20", "--limit", "5", "--pages", "2"),
        (
            r'^\{"definitions": 20, "limit": 5, "pages": 2, "median_ms": [\d.]+, "min_ms": [\d.]+, '
            r'"statements_per_page": [\d.]+\}$',
        ),
        in_suite=False,
        why_not="an admin API in process (its catalog migrated and seeded) and a topic made: 3.8-4.0 s even at 4 "
        "definitions",
    ),
    Smoke(
        "bench_dispatcher",
        ("--single", "50", "--batches", "4", "--backlog", "4", "--slow-delay", "0.05", "--slow-seconds", "1"),
        (
            r"^  dispatcher \(Kafka, render, HTTP, outcome\) +[\d,]+ requests/s +[\d.]+x raw",
            r"^  dispatcher +[\d,]+ members/s +[\d.]+x raw",
            r"^  dispatcher delivered \d+ batches; RSS min/last/peak",
        ),
        in_suite=False,
        why_not="three dispatcher processes against the lean receiver: about 12 s",
    ),
    Smoke(
        "bench_dispatcher_cpu",
        ("--requests", "256", "--rounds", "1"),
        (r"^median on asyncio, aiohttp: the dispatcher's CPU a request is [\d.]+x the plain loop's",),
    ),
    Smoke(
        "bench_e2e",
        ("--members", "2000", "--single-members", "200", "--partner-latency-ms", "2", "--out", "{out}"),
        (
            r"^batch +pipeline: exportctl run → recorded +[\d,]+ .* [\d.]+x",
            r"^single +raw: sqlite3 \+ aiohttp \(C=8\) +[\d,]+ ",
            r"^single: 200 members, one-member template \(json body, partner latency 2 ms\)",
            r"^chart and table written to ",
        ),
        in_suite=False,
        why_not="the whole pipeline as processes, twice, beside its raw stages: about 25 s",
    ),
    Smoke(
        "bench_extractor",
        ("--members", "2000", "--store", "sqlite", "--rounds", "1"),
        (r"^sqlite +2,000 members +median of 1: baseline +[\d,]+ members/s +extractor rows +[\d,]+ \([\d.]+x\)",),
        in_suite=False,
        why_not="three processes a store, each reading and producing: about 9 s for SQLite alone",
    ),
    Smoke(
        "bench_fleet_limits",
        ("--requests", "200"),
        (r"^  lease vs quota division +\d+x$",),
    ),
    Smoke(
        "bench_http_clients",
        ("--requests", "50", "--concurrency", "8"),
        (r"^  httpx async, aiohttp transport +[\d,]+ requests/s +[\d.]+x$",),
    ),
    Smoke(
        "bench_inspector",
        ("--single", "64", "--rounds", "1"),
        (r"^  inspector on, every attempt kept +best +[\d,]+ requests/s [\d.]+x",),
        in_suite=False,
        why_not="five dispatcher processes, one a contender: about 19 s",
    ),
    Smoke(
        "bench_kafka_clients",
        ("--turns", "1", "--modes", "idle", "--batch-records", "4", "--single-records", "4", "--produce-records", "4"),
        (r"^single, idle: confluent / kafka-python: records/s [\d.]+x, CPU a record [\d.]+x",),
        in_suite=False,
        why_not="needs the bench extra (confluent-kafka), which `make test` does not install; six worker processes",
        needs_bench_extra=True,
    ),
    Smoke(
        "bench_masking_repeats",
        ("--rounds", "1"),
        (r"^    now \(a rebuild per value found\) +[\d.]+ µs +[\d.]+x;",),
    ),
    Smoke(
        "bench_notifier_fold",
        ("--events", "100", "--members", "10", "--log-events", "10", "--rounds", "1"),
        (
            r"^  PostgreSQL: one by one +\d+ events/s +per poll +\d+ events/s +[\d.]+x$",
            r"^  PostgreSQL: without +\d+ events/s +delivery log +\d+ events/s \([\d.]+x\)",
        ),
    ),
    Smoke(
        "bench_notifier_sweep",
        ("--notifications", "10", "--turns", "1"),
        (r"^  postgresql +\S+ +median +[\d.]+ ms \([\d.]+x the first\)",),
        in_suite=False,
        why_not="a process per catalog dialect, each migrating a catalog: about 6-8 s",
    ),
    Smoke(
        "bench_reason_masking",
        ("--calls", "100", "--rounds", "1", "--loopback", "10"),
        (r"^for scale: one request to a lean receiver on loopback, sequentially: \d+ µs$",),
    ),
    Smoke(
        "bench_rendering",
        ("--seconds", "0.01"),
        (r"^    json_body +[\d.]+ ms +[\d.]+x$",),
    ),
    Smoke(
        "bench_round_acks",
        ("--rounds", "2", "--outcomes", "4", "--members", "10"),
        (r"^baseline: one record +median +[\d.]+ ms +p90 +[\d.]+ ms +\([\d.]+x one record\)$",),
    ),
    Smoke(
        "bench_run_start",
        ("--runs", "5", "--rounds", "1"),
        (
            r"^baseline \(plain sqlite3 read of the 3 members\): [\d.]+ ms a run$",
            r"^\[statements cached\] [\d.]+ ms a run",
        ),
    ),
    Smoke(
        "bench_scheduler",
        ("--definitions", "50", "--minutes", "16", "--lookaheads", "10", "--part", "scheduler", "--catalog", "sqlite"),
        (r"^\[sqlite, lookahead 10 s\] [1-9]\d* runs; publish-side fire delay p50 [\d.]+ s",),
    ),
    Smoke(
        "bench_scheduler",
        ("--definitions", "100", "--burst", "5", "--part", "starts", "--catalog", "sqlite"),
        (r"^\[sqlite, 1 extractor\(s\), \d+ definitions\] scheduler, lookahead 10 s: 5 runs due at one instant",),
        in_suite=False,
        why_not="its bursts are due at whole minutes (three of them, each 10 s ahead at least): about 2-3 minutes",
    ),
)


def run(smoke: Smoke, bootstrap: str, out: Path, env: Mapping[str, str], timeout: float = 600) -> tuple[str, float]:
    """Runs ``smoke``: its output (stdout, then stderr) and wall seconds; raises AssertionError, with the output,
    when it fails or does not print its figures."""
    started = time.perf_counter()
    done = subprocess.run(
        smoke.argv(bootstrap, out),
        cwd=REPO_ROOT,
        env={**os.environ, **env, **smoke.env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{smoke.name} exited {done.returncode}:\n{output[-4000:]}")
    if missing := smoke.missing_figures(done.stdout):
        raise AssertionError(f"{smoke.name} did not print {missing}:\n{output[-4000:]}")
    return output, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="BENCH", help="these benchmarks only (e.g. bench_rendering)")
    parser.add_argument("--list", action="store_true", help="list the smokes and exit")
    args = parser.parse_args()
    smokes = [s for s in SMOKES if not args.only or s.name in args.only]
    if args.list:
        for smoke in smokes:
            where = "suite and make bench-smoke" if smoke.in_suite else f"make bench-smoke only: {smoke.why_not}"
            print(f"{smoke.name} {' '.join(smoke.args)}  ({where})")
        return
    from tests.benchmarks.common import kafka_bootstrap, postgres_databases

    began = time.perf_counter()
    failed: list[str] = []
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        postgres = postgres_databases(stack)(f"smoke_{uuid.uuid4().hex[:8]}")
        out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-smoke-")))
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "EXPORT_TEST_POSTGRES_URL": postgres}
        for smoke in smokes:
            try:
                _, seconds = run(smoke, bootstrap, out, env)
            except (AssertionError, subprocess.TimeoutExpired) as error:
                failed.append(smoke.name)
                print(f"FAILED {smoke.name}: {error}", flush=True)
            else:
                print(f"ok {seconds:5.1f} s  {smoke.name} {' '.join(smoke.args)}", flush=True)
    print(
        f"{len(smokes) - len(failed)} of {len(smokes)} benchmarks ran and printed their figures in "
        f"{time.perf_counter() - began:.0f} s"
    )
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
