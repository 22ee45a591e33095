"""Change-mode benchmark: a change run over N members with 1% changed, against a full run of the same definition.

In separate child processes (each peak RSS its own), on one SQLite member store of N demo members
(``SELECT * FROM members``, 11 columns, batch size 500, page 5,000, real Kafka, acks=all):

- **full**: the definition in full mode (every member published; the members' JSON written by the database,
  the default);
- **seed**: its first change-mode run (every member added and staged), then every batch confirmed through the
  outcome follower (as the notifier does): untimed set-up, reported;
- **changes**: after 1% of the members changed (``points + 1`` on every hundredth), the change-mode run:
  snapshot loaded, every member read and fingerprinted, the 1% published and staged.

- **guard**: the pass of the guard against mass removals (``sync.max_removed``) over the query's keys, which a
  change run whose removals are sent makes before its first page: with the default bound (it stops once half of
  the partner's members are seen) and reading every key (a bound of 0%), against the change run's time.

The snapshot lives in the catalog: the seed and change runs are done once with a SQLite catalog and once with a
PostgreSQL one, and the snapshot's storage (table and indexes) is reported per member for each. Also printed:
the fingerprint's cost per member (canonical JSON + BLAKE2b-64) and the in-memory classification's.

    .venv/bin/python -m tests.benchmarks.bench_changes [--members 1000000]

``KAFKA_BOOTSTRAP_SERVERS`` / ``EXPORT_TEST_POSTGRES_URL`` reuse running servers; otherwise a local broker and
a throwaway PostgreSQL are started. The demo store is cached under ``.local/bench`` and copied before it changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from tests.benchmarks.common import kafka_bootstrap, postgres_databases, sqlite_store

BATCH_SIZE = 500
PAGE_SIZE = 5_000


def _reset_peak_rss() -> None:
    """Start the process's peak RSS (VmHWM) over from its current RSS (Linux: ``/proc/self/clear_refs``), so the
    peak measured is the run's, not the set-up's (imports, migrations)."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _catalog(catalog_url: str) -> CatalogStores:
    catalog = CatalogStores.from_url(catalog_url, migrate=True)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="all", sql="SELECT * FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=BATCH_SIZE))
    catalog.definitions.apply(ExportDefinition(name="full", query="all", template="t"))
    catalog.definitions.apply(
        ExportDefinition.model_validate(
            {"name": "changes", "query": "all", "template": "t", "sync": {"mode": "changes"}}
        )
    )
    return catalog


def child_run(store_url: str, bootstrap: str, catalog_url: str, definition: str, confirm: str) -> dict[str, Any]:
    """One run of ``definition`` through the real extractor; with ``confirm``, then every staged batch confirmed."""
    from services.extractor.extraction import Extractor
    from shared.catalog import ChangeSnapshotFollower, SqlChangeSnapshots
    from shared.events import BatchOutcome, ChangeKind, RunRequested
    from shared.kafka import ensure_topics, make_producer, produce
    from shared.log import configure_logging
    from shared.querystore import MemberReader
    from shared.settings import CommonSettings

    configure_logging("WARNING", "console")
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", topic_partitions=6
    )
    ensure_topics(settings)
    catalog = _catalog(catalog_url)
    producer = make_producer(settings, "bench-changes")
    extractor = Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=MemberReader.from_url(store_url),
        topics=settings.topics,
        send=lambda out: produce(producer, out),
        page_size=PAGE_SIZE,
        snapshots=SqlChangeSnapshots(catalog.database),
    )
    request = RunRequested(definition=definition)
    _reset_peak_rss()
    rss_before = _rss_mb()
    started = time.perf_counter()
    extractor.handle(request)
    seconds = time.perf_counter() - started
    checkpoint = catalog.extraction.claim_extraction(request.run_id, definition)
    producer.close()
    peak = _peak_rss_mb()
    confirm_seconds = 0.0
    if confirm == "confirm":
        started = time.perf_counter()
        outcomes = [
            BatchOutcome(
                run_id=request.run_id,
                definition=definition,
                batch_index=index,
                delivered=1,
                failed=0,
                change=ChangeKind.ADDED,
                member_keys=[],  # the follower reads only the refused keys (none here)
            )
            for index in range(checkpoint.next_batch_index)
        ]
        with catalog.database.transaction() as session:
            ChangeSnapshotFollower().follow(session, outcomes)
        confirm_seconds = time.perf_counter() - started
    catalog.close()
    return {
        "members": checkpoint.members,
        "batches": checkpoint.next_batch_index,
        "seconds": seconds,
        "confirm_seconds": confirm_seconds,
        "peak_rss_mb": peak,
        "rss_at_start_mb": rss_before,
    }


def _child(*args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_changes", "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def snapshot_bytes(catalog_url: str) -> tuple[int, int]:
    """The snapshot's storage (its rows' table and indexes), compacted first, and its member count."""
    engine = make_engine(catalog_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            members = int(connection.execute(text("SELECT count(*) FROM change_members")).scalar() or 0)
            if engine.dialect.name == "postgresql":
                # The confirming UPDATEs leave dead row versions, which autovacuum reclaims later.
                connection.execute(text("VACUUM FULL change_members"))
                size = connection.execute(text("SELECT pg_total_relation_size('change_members')")).scalar()
            else:
                connection.execute(text("VACUUM"))
                size = connection.execute(
                    text(
                        "SELECT sum(pgsize) FROM dbstat WHERE name IN "
                        "('change_members', 'ix_change_members_awaiting', 'sqlite_autoindex_change_members_1')"
                    )
                ).scalar()
        return int(size or 0), members
    finally:
        engine.dispose()


def fingerprint_cost(store_url: str, members: int = 100_000) -> tuple[float, float]:
    """Microseconds a member: canonical JSON + hash (key and values), and classification against a snapshot."""
    from services.extractor.change_extraction import page_keys
    from shared.domain.change_index import ChangeIndex
    from shared.domain.member_hashes import key_hash
    from shared.member_fingerprints import Fingerprints

    engine = make_engine(store_url)
    with engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM members ORDER BY id LIMIT {members}"))
        columns, rows = list(result.keys()), result.all()
    engine.dispose()
    started = time.perf_counter()
    keys = np.fromiter((key_hash(k) for k in page_keys(rows, 0)), dtype=np.int64, count=len(rows))
    fingerprint = Fingerprints(columns)
    prints = np.fromiter((fingerprint(row) for row in rows), dtype=np.int64, count=len(rows))
    hashing = (time.perf_counter() - started) / len(rows) * 1e6
    index = ChangeIndex.build(keys.copy(), prints.copy(), np.zeros(len(rows), dtype=np.int8))
    started = time.perf_counter()
    for start in range(0, len(rows), PAGE_SIZE):
        index.classify(keys[start : start + PAGE_SIZE], prints[start : start + PAGE_SIZE])
    classifying = (time.perf_counter() - started) / len(rows) * 1e6
    return hashing, classifying


def guard_cost(store_url: str, catalog_url: str) -> tuple[float, float]:
    """Seconds of the guard's pass over the query's keys against the definition's snapshot (loaded first, untimed:
    the run loads it anyway): with the default bound, and reading every key."""
    from services.extractor.removal_guard import KEY_PAGE, removals_over_limit
    from shared.catalog import SqlChangeSnapshots
    from shared.domain.removal_limit import RemovalLimit
    from shared.querystore import MemberReader

    catalog = CatalogStores.from_url(catalog_url)
    snapshots = SqlChangeSnapshots(catalog.database)
    index = snapshots.load(snapshots.begin("changes", str(uuid.uuid4())))
    query = catalog.definitions.get(SavedQuery, "all")
    reader = MemberReader.from_url(store_url)
    seconds: dict[str | None, list[float]] = {None: [], "0%": []}
    for setting in (None, "0%", None, "0%"):  # in turn, twice: the best of each
        started = time.perf_counter()
        over = removals_over_limit(index, RemovalLimit.of(setting), reader.key_pages(query, page_size=KEY_PAGE))
        seconds[setting].append(time.perf_counter() - started)
        assert over is None, "no member left"
    reader.close()
    catalog.close()
    return min(seconds[None]), min(seconds["0%"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_run(*args.child)))
        return
    members = args.members
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        name = f"bench_changes_{uuid.uuid4().hex[:8]}"
        postgres_url = postgres_databases(stack)(name)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # A copy (by SQLite's backup API: the cache's write-ahead log included) that this benchmark may change.
        with (
            sqlite3.connect(sqlite_store(members).removeprefix("sqlite:///")) as cached,
            sqlite3.connect(workdir / "members.db") as copy,
        ):
            cached.backup(copy)
        store_url = f"sqlite:///{workdir / 'members.db'}"
        catalogs = {"sqlite": f"sqlite:///{workdir / 'catalog.db'}", "postgresql": postgres_url}

        hashing, classifying = fingerprint_cost(store_url)
        print(
            f"fingerprint (key hash + values' BLAKE2b-64): {hashing:.2f} us/member; "
            f"classification: {classifying:.3f} us/member  [nproc {os.cpu_count()}]",
            flush=True,
        )
        full = _child(store_url, bootstrap, catalogs["sqlite"], "full", "-")
        print(
            f"full run      {members:>9,} members: {full['seconds']:6.1f} s  "
            f"{members / full['seconds']:>9,.0f} members/s  peak RSS {full['peak_rss_mb']:.0f} MB "
            f"(RSS when it started: {full['rss_at_start_mb']:.0f} MB)",
            flush=True,
        )
        for backend, catalog_url in catalogs.items():
            seed = _child(store_url, bootstrap, catalog_url, "changes", "confirm")
            size, rows = snapshot_bytes(catalog_url)
            print(
                f"[{backend} snapshot] first change run (all added, staged): {seed['seconds']:.1f} s, "
                f"peak RSS {seed['peak_rss_mb']:.0f} MB; confirming {seed['batches']:,} batches: "
                f"{seed['confirm_seconds']:.1f} s; snapshot {size / 1e6:.1f} MB for {rows:,} members = "
                f"{size / max(rows, 1):.0f} bytes/member",
                flush=True,
            )
        with make_engine(store_url).begin() as connection:
            changed = connection.execute(text("UPDATE members SET points = points + 1 WHERE id % 100 = 0")).rowcount
        runs = {}
        for backend, catalog_url in catalogs.items():
            run = runs[backend] = _child(store_url, bootstrap, catalog_url, "changes", "-")
            print(
                f"[{backend} snapshot] change run, {changed:,} changed ({changed / members:.0%}): "
                f"{run['seconds']:6.1f} s ({run['seconds'] / full['seconds']:.2f}x the full run's time), "
                f"{run['members']:,} published, peak RSS {run['peak_rss_mb']:.0f} MB "
                f"(RSS when it started: {run['rss_at_start_mb']:.0f} MB) "
                f"({run['peak_rss_mb'] / full['peak_rss_mb']:.2f}x the full run's)",
                flush=True,
            )
        default, every_key = guard_cost(store_url, catalogs["sqlite"])
        change_run = runs["sqlite"]["seconds"]
        print(
            f"[guard] pass over the keys before a change run sending removals: {default:.2f} s with the default "
            f"bound (50%: stops at about half the keys) = {default / change_run:.1%} of the change run's time, "
            f"{every_key:.2f} s reading every key = {every_key / change_run:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
