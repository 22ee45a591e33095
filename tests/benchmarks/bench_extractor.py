"""Extractor benchmark: N members from SQLite and from PostgreSQL to real Kafka, beside a raw baseline.

For each store and size, in separate child processes (so each peak RSS is its own):

- **extractor**: ``Extractor.handle`` of one run over ``SELECT * FROM members`` (11 columns), batch
  size 500, page 5,000, every record acknowledged (acks=all) and every page checkpointed.
- **baseline**: a plain DB-API cursor reading the same rows (``fetchmany``), plus a plain kafka-python
  producer (same acks and compression) sending the same record bytes, prepared beforehand untimed.
  Baseline time = read time + produce time.

Prints members/s, the ratio extractor/baseline, and peak RSS. Targets (issue 4): >= 100,000
members/s, >= 0.5x the baseline, peak RSS <= 250 MB and flat from 1M to 3M members.

    .venv/bin/python -m tests.benchmarks.bench_extractor [--members 1000000 3000000] [--store both]

``KAFKA_BOOTSTRAP_SERVERS`` / ``EXPORT_TEST_POSTGRES_URL`` reuse running servers; otherwise a local
broker and a throwaway PostgreSQL are started. Generated SQLite stores are cached under ``.local/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

from sqlalchemy import text

from devtools.kafka_broker import LocalKafka
from devtools.postgres import LocalPostgres
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.querystore.demo_data import create_demo_members
from tests.benchmarks.common import bare_produce, member_batch_records, new_topic, sqlite_store

BATCH_SIZE = 500
PAGE_SIZE = 5_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(bootstrap: str, prefix: str) -> Any:
    from shared.settings import CommonSettings

    return CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=6)


def child_extractor(store_url: str, bootstrap: str, workdir: str) -> dict[str, Any]:
    """One run through the real extractor; returns members, seconds, peak RSS."""
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
    catalog.definitions.apply(SavedQuery(name="all", sql="SELECT * FROM members"))
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


def child_baseline(store_url: str, bootstrap: str) -> dict[str, Any]:
    """A plain cursor read of the rows, then a plain producer sending the same record bytes."""
    engine = make_engine(store_url)
    started = time.perf_counter()
    read = 0
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute("SELECT * FROM members ORDER BY id")
        while rows := cursor.fetchmany(PAGE_SIZE):
            read += len(rows)
    read_seconds = time.perf_counter() - started

    # Untimed: the same bytes the extractor sends.
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute("SELECT * FROM members ORDER BY id")
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


def postgres_store(server: Any, members: int) -> str:
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
    engine.dispose()
    return url


def report(store: str, members: int, extractor: dict[str, Any], baseline: dict[str, Any]) -> None:
    rate = extractor["members"] / extractor["seconds"]
    base_rate = baseline["members"] / baseline["seconds"]
    print(
        f"{store:<10} {members:>9,} members  extractor {rate:>9,.0f} members/s ({extractor['seconds']:.1f} s, "
        f"peak RSS {extractor['peak_rss_mb']:.0f} MB)  baseline {base_rate:>9,.0f} members/s "
        f"(read {baseline['read_seconds']:.1f} s + produce {baseline['produce_seconds']:.1f} s, "
        f"{baseline['bytes'] / 1e6:.0f} MB)  ratio {rate / base_rate:.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_extractor(*rest) if kind == "extractor" else child_baseline(*rest)
        print(json.dumps(result))
        return
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack.enter_context(LocalKafka()).bootstrap_servers
        stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
        postgres: Any = None
        if "postgresql" in stores:
            if os.environ.get("EXPORT_TEST_POSTGRES_URL"):
                base = os.environ["EXPORT_TEST_POSTGRES_URL"]
                postgres = _database_on(base)
            else:
                postgres = stack.enter_context(LocalPostgres()).create_database
        for store in stores:
            for members in args.members:
                url = sqlite_store(members) if store == "sqlite" else postgres_store(postgres, members)
                workdir = stack.enter_context(__import__("tempfile").TemporaryDirectory())
                extractor = _child("extractor", url, bootstrap, workdir)
                baseline = _child("baseline", url, bootstrap)
                report(store, members, extractor, baseline)


def _database_on(server_url: str) -> Any:
    def create(name: str) -> str:
        engine = make_engine(server_url)
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return server_url.rsplit("/", 1)[0] + f"/{name}"

    return create


if __name__ == "__main__":
    main()
