"""Extractor benchmark: N members from SQLite and from PostgreSQL to real Kafka, beside a raw baseline.

For each store and size, in separate child processes (so each peak RSS is its own), ``--rounds``
times, in a rotating order (the machine's load drifts; each round has its own baseline):

- **extractor, JSON**: ``Extractor.handle`` of one run over ``SELECT * FROM members`` (11 columns),
  batch size 500, page 5,000, every record acknowledged (acks=all) and every page checkpointed, the
  members' JSON written by the database (``EXPORT_EXTRACTOR_DATABASE_JSON``, the default);
- **extractor, rows**: the same with driver rows encoded by orjson (the setting off);
- **baseline**: a plain DB-API cursor reading the same rows (``fetchmany``), plus a plain kafka-python
  producer (same acks and compression) sending the same record bytes, prepared beforehand untimed.
  Baseline time = read time + produce time.

Prints, per round and as medians, members/s, the ratio to the round's baseline, and peak RSS.

With ``--replicas 1 2``: one run through extractor *processes* instead, 1 then 2 of them in one consumer
group (6 partitions; a run split into key ranges when more than one replica holds partitions, at least
``--range-members`` members a range), timed from publishing the run request to the ExtractionCompleted
event (a warm-up run first, once the group is stable), beside the same round's raw baseline.

Targets (issue 18): extraction >= 0.8x the baseline; 2 extractors on one run >= 1.6x one extractor's rate
where cores allow (the machine's core count is printed); peak RSS <= 250 MB and flat from 1M to 3M.

    .venv/bin/python -m tests.benchmarks.bench_extractor [--members 1000000 3000000] [--store both] [--rounds 1]
    .venv/bin/python -m tests.benchmarks.bench_extractor --members 500000 --replicas 1 2 --rounds 3
    .venv/bin/python -m tests.benchmarks.bench_extractor --members 200000 --store postgresql --key uuid

``--key uuid``: the members keyed by a ``uuid`` column (``uid``, the md5 of the id; PostgreSQL only), a copy of the
table (``members_uuid``) in the same store, read by ``SELECT * FROM members_uuid`` in ``uid`` order.

``KAFKA_BOOTSTRAP_SERVERS`` / ``EXPORT_TEST_POSTGRES_URL`` reuse running servers; otherwise a local
broker and a throwaway PostgreSQL are started. Generated SQLite stores are cached under ``.local/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.querystore.demo_data import create_demo_members
from tests.benchmarks.common import (
    bare_produce,
    cpu_seconds,
    kafka_bootstrap,
    member_batch_records,
    new_topic,
    postgres_databases,
    sqlite_store,
)

BATCH_SIZE = 500
PAGE_SIZE = 5_000
#: ``--key``: the table read and its key column.
KEYS = {"integer": ("members", "id"), "uuid": ("members_uuid", "uid")}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(bootstrap: str, prefix: str) -> Any:
    from shared.settings import CommonSettings

    return CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=6)


def child_extractor(
    store_url: str, bootstrap: str, workdir: str, encoding: str = "json", key: str = "integer"
) -> dict[str, Any]:
    """One run through the real extractor (``encoding``: ``json`` or ``rows``); returns members, seconds, peak RSS."""
    from services.extractor.extraction import Extractor
    from shared.events import RunRequested
    from shared.kafka import ensure_topics, make_producer, produce
    from shared.log import configure_logging
    from shared.querystore import MemberReader

    configure_logging("WARNING", "console")
    settings = _settings(bootstrap, f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    catalog = CatalogStores.from_url(f"sqlite:///{workdir}/catalog.db", migrate=True)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    table, key_column = KEYS[key]
    catalog.definitions.apply(SavedQuery(name="all", sql=f"SELECT * FROM {table}", key_column=key_column))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=BATCH_SIZE))
    catalog.definitions.apply(ExportDefinition(name="bench", query="all", template="t"))
    producer = make_producer(settings, "bench-extractor")
    extractor = Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=MemberReader.from_url(store_url),
        topics=settings.topics,
        send=lambda out: produce(producer, out),
        page_size=PAGE_SIZE,
        database_json=encoding == "json",
    )
    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    extractor.handle(RunRequested(definition="bench"))
    seconds = time.perf_counter() - started
    checkpoint = catalog.extraction.claim_extraction(next(iter(_run_ids(catalog))), "bench")
    producer.close()
    return {
        "members": checkpoint.members,
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_at_start_mb": rss_before,
    }


def _run_ids(catalog: CatalogStores) -> list[uuid.UUID]:
    with catalog.database.engine.connect() as connection:
        return [uuid.UUID(r[0]) for r in connection.execute(text("SELECT run_id FROM extraction_checkpoints"))]


def child_baseline(store_url: str, bootstrap: str, key: str = "integer") -> dict[str, Any]:
    """A plain cursor read of the rows, then a plain producer sending the same record bytes."""
    select = "SELECT * FROM {} ORDER BY {}".format(*KEYS[key])
    engine = make_engine(store_url)
    started = time.perf_counter()
    read = 0
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute(select)
        while rows := cursor.fetchmany(PAGE_SIZE):
            read += len(rows)
    read_seconds = time.perf_counter() - started

    # Untimed: the same bytes the extractor sends.
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute(select)
        records = member_batch_records(cursor, template="t", batch_size=BATCH_SIZE, page_size=PAGE_SIZE)
    engine.dispose()
    produce_seconds = bare_produce(bootstrap, new_topic(bootstrap), records)
    return {
        "members": read,
        "read_seconds": read_seconds,
        "produce_seconds": produce_seconds,
        "seconds": read_seconds + produce_seconds,
        "bytes": sum(len(v) for _, v in records),
    }


def _child(*args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_extractor", "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def postgres_store(server: Any, members: int, key: str = "integer") -> str:
    url = str(server(f"bench_{members}"))
    engine = make_engine(url)
    with engine.connect() as connection:
        try:
            count = connection.execute(text("SELECT count(*) FROM members")).scalar()
        except Exception:  # noqa: BLE001 - no table yet
            count = None
    if count != members:
        create_demo_members(engine, members)
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE members"))
    if key == "uuid":
        _uuid_keyed_copy(engine, members)
    engine.dispose()
    return url


def _uuid_keyed_copy(engine: Any, members: int) -> None:
    """``members_uuid``: the members with a ``uuid`` key first (``uid``, the md5 of the id: not in id order)."""
    with engine.connect() as connection:
        try:
            count = connection.execute(text("SELECT count(*) FROM members_uuid")).scalar()
        except Exception:  # noqa: BLE001 - no table yet
            count = None
    if count == members:
        return
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS members_uuid"))
        connection.execute(text("CREATE TABLE members_uuid AS SELECT md5(id::text)::uuid AS uid, * FROM members"))
        connection.execute(text("ALTER TABLE members_uuid ADD PRIMARY KEY (uid)"))
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE members_uuid"))


VARIANTS = ("baseline", "rows", "json")


def report(store: str, members: int, rounds: list[dict[str, dict[str, Any]]]) -> None:
    def rate(result: dict[str, Any]) -> float:
        return float(result["members"] / result["seconds"])

    for number, results in enumerate(rounds, 1):
        baseline = results["baseline"]
        base = rate(baseline)
        print(
            f"{store:<10} {members:>9,} members  round {number}: baseline {base:>9,.0f} members/s "
            f"(read {baseline['read_seconds']:.1f} s + produce {baseline['produce_seconds']:.1f} s, "
            f"{baseline['bytes'] / 1e6:.0f} MB)  "
            + "  ".join(
                f"extractor {v} {rate(results[v]):>9,.0f} ({rate(results[v]) / base:.2f}x, "
                f"RSS {results[v]['peak_rss_mb']:.0f} MB)"
                for v in ("rows", "json")
            ),
            flush=True,
        )
    medians = {v: statistics.median(rate(r[v]) for r in rounds) for v in VARIANTS}
    ratios = {v: statistics.median(rate(r[v]) / rate(r["baseline"]) for r in rounds) for v in ("rows", "json")}
    print(
        f"{store:<10} {members:>9,} members  median of {len(rounds)}: baseline {medians['baseline']:>9,.0f} members/s  "
        f"extractor rows {medians['rows']:>9,.0f} ({ratios['rows']:.2f}x)  "
        f"extractor json {medians['json']:>9,.0f} ({ratios['json']:.2f}x)  [nproc {os.cpu_count()}]",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (the README's figures: 3)")
    parser.add_argument("--replicas", type=int, nargs="+", help="extractor processes on one run, e.g. 1 2")
    parser.add_argument("--range-members", type=int, default=250_000, help="EXPORT_EXTRACTOR_RANGE_MEMBERS")
    parser.add_argument(
        "--key", choices=sorted(KEYS), default="integer", help="the key column's type (uuid: PostgreSQL)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_extractor(*rest) if kind == "extractor" else child_baseline(*rest)
        print(json.dumps(result))
        return
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
        if args.key != "integer" and (stores != ["postgresql"] or args.replicas):
            parser.error("--key uuid: with --store postgresql, without --replicas")
        postgres = postgres_databases(stack) if "postgresql" in stores else None
        for store in stores:
            for members in args.members:
                url = sqlite_store(members) if store == "sqlite" else postgres_store(postgres, members, args.key)
                if args.replicas:
                    replica_rounds(store, members, url, bootstrap, args)
                    continue
                rounds = []
                for number in range(args.rounds):
                    results: dict[str, dict[str, Any]] = {}
                    for variant in VARIANTS[number % 3 :] + VARIANTS[: number % 3]:
                        if variant == "baseline":
                            results[variant] = _child("baseline", url, bootstrap, args.key)
                        else:
                            workdir = stack.enter_context(tempfile.TemporaryDirectory())
                            results[variant] = _child("extractor", url, bootstrap, workdir, variant, args.key)
                    rounds.append(results)
                report(store, members, rounds)


def replicas_run(url: str, bootstrap: str, replicas: int, range_members: int) -> dict[str, Any]:
    """One run through ``replicas`` extractor processes: seconds from the request to ExtractionCompleted."""
    from shared.events import RunRequested
    from tests.extractor_replicas import ExtractorReplicas, wait_for_extraction
    from tests.kafka_helpers import produce

    with tempfile.TemporaryDirectory() as workdir:
        catalog_url = f"sqlite:///{workdir}/catalog.db"
        catalog = CatalogStores.from_url(catalog_url, migrate=True)
        catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
        catalog.definitions.apply(SavedQuery(name="all", sql="SELECT * FROM members"))
        catalog.definitions.apply(SavedQuery(name="few", sql="SELECT * FROM members WHERE id <= 1000"))
        catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=BATCH_SIZE))
        catalog.definitions.apply(HttpTemplate(name="t-few", query="few", profile="p", batch_size=BATCH_SIZE))
        catalog.definitions.apply(ExportDefinition(name="bench", query="all", template="t"))
        catalog.definitions.apply(ExportDefinition(name="warm-up", query="few", template="t-few"))
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        settings = _settings(bootstrap, prefix)
        env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EXPORT_TOPIC_PREFIX": prefix,
            "EXPORT_TOPIC_PARTITIONS": "6",
            "EXPORT_CATALOG_URL": catalog_url,
            "EXPORT_QUERY_STORE_URL": url,
            "EXPORT_EXTRACTOR_PAGE_SIZE": str(PAGE_SIZE),
            "EXPORT_EXTRACTOR_RANGE_MEMBERS": str(range_members),
            "EXPORT_LOG_LEVEL": "WARNING",
        }
        processes = ExtractorReplicas(env, replicas, Path(workdir) / "logs").start()
        try:
            processes.wait_joined(bootstrap, prefix)
            for definition in ("warm-up", "bench"):
                request = RunRequested(definition=definition)
                cpu_before = [cpu_seconds(p.pid) for p in processes.processes]
                machine_before = _machine_cpu()
                started = datetime.now(UTC)
                produce(bootstrap, settings.topics.run_requests, [(str(request.run_id), request.to_bytes())])
                completed = wait_for_extraction(bootstrap, settings.topics.run_events, request.run_id, timeout=900)
                machine = [after - before for before, after in zip(machine_before, _machine_cpu(), strict=True)]
                cpu = sum(
                    cpu_seconds(p.pid) - before for p, before in zip(processes.processes, cpu_before, strict=True)
                )
            ranges = len(catalog.extraction.run_ranges(request.run_id))
        finally:
            processes.stop()
            catalog.close()
    return {
        "members": completed.members,
        "seconds": (completed.at - started).total_seconds(),
        "ranges": ranges,
        "extractor_cpu_seconds": cpu,
        "machine_busy": machine[0] / machine[1] if machine[1] else 0.0,
    }


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (every core)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return float(sum(fields) - idle), float(sum(fields))


def replica_rounds(store: str, members: int, url: str, bootstrap: str, args: argparse.Namespace) -> None:
    """``--rounds`` rounds of: the raw baseline, then each replica count on one run; the ratios to 1 replica."""
    rates: dict[int, list[float]] = {n: [] for n in args.replicas}
    for number in range(1, args.rounds + 1):
        baseline = _child("baseline", url, bootstrap)
        base = baseline["members"] / baseline["seconds"]
        line = [f"{store:<10} {members:>9,} members  round {number}: baseline {base:>9,.0f} members/s"]
        for replicas in args.replicas:
            result = replicas_run(url, bootstrap, replicas, args.range_members)
            rate = result["members"] / result["seconds"]
            rates[replicas].append(rate)
            line.append(
                f"{replicas} extractor{'s' if replicas > 1 else ''} {rate:>9,.0f} members/s "
                f"({result['seconds']:.1f} s, {result['ranges'] or 'not'} split, {rate / base:.2f}x baseline; "
                f"extractor CPU {result['extractor_cpu_seconds']:.1f} s, "
                f"machine {100 * result['machine_busy']:.0f}% busy)"
            )
        print("  ".join(line), flush=True)
    medians = {n: statistics.median(r) for n, r in rates.items()}
    fewest = min(rates)
    # Each round's ratio to its own run with the fewest replicas (the load of a shared machine drifts).
    paired = {n: [a / b for a, b in zip(r, rates[fewest], strict=True)] for n, r in rates.items()}
    print(
        f"{store:<10} {members:>9,} members  median of {args.rounds}: "
        + "  ".join(
            f"{n} extractor(s) {m:>9,.0f} members/s ({statistics.median(paired[n]):.2f}x {fewest} in the same round: "
            + ", ".join(f"{x:.2f}" for x in paired[n])
            + ")"
            for n, m in medians.items()
        )
        + f"  [nproc {os.cpu_count()}: the extractors, the broker and the database share them]",
        flush=True,
    )


if __name__ == "__main__":
    main()
