"""Helpers shared by the benchmarks: the lean receiver's counters, a process's memory, a plain aiohttp loop,
cached member stores, member-batch records and bare kafka-python produce and consume.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition
from sqlalchemy import text

from shared.catalog import make_engine
from shared.events import Priority
from shared.member_batches import BatchEncoder
from shared.querystore.demo_data import create_demo_members

HEADERS = {"Content-Type": "application/json"}
#: A one-member Jinja body of five columns (the bench_dispatcher and bench_e2e single-member templates).
SINGLE_BODY = (
    '{"id": {{ member.id }}, "email": {{ member.email | tojson }}, "first_name": {{ member.first_name | tojson }}, '
    '"tier": {{ member.tier | tojson }}, "points": {{ member.points }}}'
)
CACHE = Path(".local/bench")
MAX_RECORD_BYTES = 900_000  # the extractor's default (EXPORT_EXTRACTOR_MAX_RECORD_BYTES)
_encoder = partial(BatchEncoder, priority=Priority.NORMAL, max_record_bytes=MAX_RECORD_BYTES, key_column="id")


# --- the lean receiver (tests/benchmarks/lean_receiver.py) -------------------------------------------------


def receiver_stats(base_url: str) -> dict[str, Any]:
    """Requests, bytes and the monotonic times of the first and the last request since the last reset."""
    stats: dict[str, Any] = httpx.get(f"{base_url}/stats").json()
    return stats


def reset_receiver(base_url: str) -> None:
    httpx.delete(f"{base_url}/stats").raise_for_status()


def receiver_rate(stats: dict[str, Any], per_request: float = 1) -> float:
    """Requests (times ``per_request``) a second between the receiver's first and last request."""
    span = (stats["last"] or 0) - (stats["first"] or 0)
    return float(stats["requests"] - 1) * per_request / span if span > 0 else 0.0


# --- memory of a process -----------------------------------------------------------------------------------


def _status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/<pid>/status (``VmHWM``: peak resident set, ``VmRSS``: now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def current_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- a plain aiohttp loop: C tasks posting bodies ----------------------------------------------------------


async def post_all(bodies: Iterable[bytes], concurrency: int, post: Callable[[bytes], Awaitable[None]]) -> None:
    """``concurrency`` tasks posting ``bodies`` (an iterable pulled lazily: a generator may read them as it goes)."""
    remaining = iter(bodies)

    async def worker() -> None:
        for body in remaining:
            await post(body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def plain_aiohttp(url: str, bodies: Iterable[bytes], concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post(body: bytes) -> None:
            async with session.post(url, data=body, headers=HEADERS) as response:
                response.raise_for_status()
                await response.read()

        await post_all(bodies, concurrency, post)


# --- member stores and member-batch records ----------------------------------------------------------------


def sqlite_store(members: int) -> str:
    """A cached SQLite file of ``members`` demo members (generated once, under .local/bench)."""
    path = CACHE / f"members-{members}.db"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # Its own partial file: two processes making one store (a parallel test run's) would rewrite each other's.
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{partial}")
        create_demo_members(engine, members)
        with engine.connect() as connection:  # fold the write-ahead log into the file before renaming it
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        partial.rename(path)
    return f"sqlite:///{path.resolve()}"


def member_batch_records(
    cursor: Any, *, template: str, batch_size: int, page_size: int, definition: str = "bench"
) -> list[tuple[bytes, bytes]]:
    """The (key, value) records the extractor sends for the rows of an executed DB-API ``cursor``."""
    run_id = uuid.uuid4()
    encoder = _encoder(run_id=run_id, definition=definition, template=template, batch_size=batch_size)
    columns = [d[0] for d in cursor.description]
    records: list[tuple[bytes, bytes]] = []
    while rows := cursor.fetchmany(page_size):
        for batch in encoder.encode_page(columns, rows, len(records)):
            records.append((f"{run_id}:{batch.batch_index}".encode(), batch.value))
    return records


# --- bare kafka-python ---------------------------------------------------------------------------------------


def new_topic(bootstrap: str, partitions: int = 6) -> str:
    topic = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    return topic


def bare_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], timeout: float = 120) -> float:
    """Seconds a plain producer (acks=all, lz4, as the services) takes to have ``records`` acknowledged."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="lz4", max_request_size=4 * 1024 * 1024
    )
    producer.send(topic, b"warm-up").get(timeout=60)
    started = time.perf_counter()
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    for future in futures:
        future.get(timeout=timeout)
    seconds = time.perf_counter() - started
    producer.close()
    return seconds


def bare_consume(bootstrap: str, topic: str, timeout: float = 120) -> tuple[int, float]:
    """A plain consumer (no group: the partitions assigned) reading ``topic`` from its beginning to its end as of
    now: the records read and the seconds taken; raises TimeoutError when it has not reached the end in time."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        read = 0
        started = time.perf_counter()
        while any(consumer.position(p) < ends[p] for p in partitions):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"read {read} records of {topic} in {timeout:.0f} s, not the whole topic")
            read += sum(len(records) for records in consumer.poll(timeout_ms=250).values())
        return read, time.perf_counter() - started
    finally:
        consumer.close()


# --- the servers a benchmark runs on --------------------------------------------------------------------------


def kafka_bootstrap(stack: ExitStack) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS`` when set (a running broker: the test suite's, for the benchmarks' smoke), else a
    local broker started for the benchmark and stopped with ``stack``."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    from devtools.kafka_broker import LocalKafka

    return stack.enter_context(LocalKafka()).bootstrap_servers


def database_on(server_url: str) -> Callable[[str], str]:
    """A function creating the database of a name (when it does not exist yet) on the PostgreSQL server of
    ``server_url`` (the URL of any of its databases) and returning its URL."""

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


def postgres_databases(stack: ExitStack) -> Callable[[str], str]:
    """A function creating a database of a name and returning its URL: on the server of ``EXPORT_TEST_POSTGRES_URL``
    when set (the test suite's, for the benchmarks' smoke), else on a throwaway server started for the benchmark and
    stopped with ``stack``."""
    if os.environ.get("EXPORT_TEST_POSTGRES_URL"):
        return database_on(os.environ["EXPORT_TEST_POSTGRES_URL"])
    from devtools.postgres import LocalPostgres

    return stack.enter_context(LocalPostgres()).create_database
