"""Dispatcher benchmark (issue 5): the dispatcher service, a real process on real Kafka, against the lean
receiver on 127.0.0.1 (its own process), beside raw baselines measured in the same run, same receiver.

Every rate is measured by the receiver, from its first request to its last, so the dispatcher's start-up
and group join are not counted, and every contender is timed by the same clock. C is the concurrency:
``EXPORT_DISPATCHER_CONCURRENCY`` for the dispatcher, tasks for the baselines.

- **single**: N one-member requests, in records of 64 (as the extractor writes them); the template renders
  each body with Jinja (five columns).
  Baselines: a plain aiohttp loop of C tasks posting the same bodies, rendered beforehand (the raw
  baseline); and the same loop on httpx with httpx-aiohttp's transport (the dispatcher's client, no
  pipeline). Target: >= 0.6x the raw baseline's requests/s.
- **batch**: M batches of 500 members, the default body (the members as a JSON list). Baseline: the
  plain aiohttp loop posting the same bodies. Target: >= 100,000 members/s.
- **slow**: the receiver answers after a delay; a backlog of B batches of 500 waits on the topic; the
  dispatcher's resident memory is sampled while it works through it. Bounded means the peak stays near
  the fast run's, far below the backlog's size.

    .venv/bin/python -m tests.benchmarks.bench_dispatcher [--single 5000] [--batches 400] [--concurrency 8]

``KAFKA_BOOTSTRAP_SERVERS`` reuses a running broker; otherwise a local one is started.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, SavedQuery
from shared.events import MemberBatch
from shared.kafka import ensure_topics, make_producer, produce_and_wait
from shared.kafka.loop import Outgoing
from shared.settings import CommonSettings
from tests.benchmarks.common import (
    HEADERS,
    SINGLE_BODY,
    current_rss_mb,
    kafka_bootstrap,
    peak_rss_mb,
    plain_aiohttp,
    post_all,
    receiver_rate,
    receiver_stats,
    reset_receiver,
)
from tests.benchmarks.lean_receiver import lean_receiver

BATCH_SIZE = 500


def member(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "email": f"amelie.martin.{i}@example.com",
        "first_name": "Amélie",
        "last_name": "Martin",
        "tier": ("bronze", "silver", "gold")[i % 3],
        "points": i * 7 % 10_000,
        "locale": "fr-FR",
        "email_opt_in": i % 2 == 0,
        "updated_at": "2026-11-01T10:00:00+00:00",
    }


def batches(template: str, count: int, size: int) -> list[MemberBatch]:
    run_id = uuid.uuid4()
    return [
        MemberBatch(
            run_id=run_id,
            definition="bench",
            template=template,
            batch_index=index,
            members=[member(index * size + j) for j in range(size)],
        )
        for index in range(count)
    ]


class Bench:
    """A broker, a catalog whose templates point at the receiver, and the dispatcher as a process."""

    def __init__(self, bootstrap: str, workdir: Path, concurrency: int) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.concurrency = concurrency
        self.catalog_url = f"sqlite:///{workdir / 'catalog.db'}"
        #: More EXPORT_* settings of the dispatcher (the inspector benchmark's contenders).
        self.extra_env: dict[str, str] = {}

    def point_templates_at(self, base_url: str) -> None:
        catalog = CatalogStores.from_url(self.catalog_url, migrate=True)
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=base_url))
        catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
        catalog.definitions.apply(
            HttpTemplate(name="single", query="q", profile="p", path="/members", batch_size=1, body=SINGLE_BODY)
        )
        catalog.definitions.apply(
            HttpTemplate(name="batch", query="q", profile="p", path="/members", batch_size=BATCH_SIZE)
        )
        catalog.close()

    def load(self, records: list[MemberBatch]) -> tuple[str, int]:
        """A fresh topic prefix holding ``records``; returns it and the bytes produced."""
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        settings = CommonSettings(kafka_bootstrap_servers=self.bootstrap, topic_prefix=prefix, topic_partitions=6)
        ensure_topics(settings)
        producer = make_producer(settings, "bench-loader")
        values = [b.to_bytes() for b in records]
        outgoing = [
            Outgoing(settings.topics.member_batches, b.identity, v) for b, v in zip(records, values, strict=True)
        ]
        produce_and_wait(producer, outgoing)
        producer.close()
        return prefix, sum(len(v) for v in values)

    def dispatcher(self, prefix: str) -> LocalPipeline:
        env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "EXPORT_TOPIC_PREFIX": prefix,
            "EXPORT_TOPIC_PARTITIONS": "6",
            "EXPORT_CATALOG_URL": self.catalog_url,
            "EXPORT_METRICS_PORT": "0",
            "EXPORT_LOG_LEVEL": "WARNING",
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_DISPATCHER_CONCURRENCY": str(self.concurrency),
        } | self.extra_env
        return LocalPipeline(env=env, log_dir=self.workdir / f"logs-{prefix}", services=("dispatcher",)).start()

    def run_dispatcher(
        self, base_url: str, records: list[MemberBatch], requests: int | None = None
    ) -> tuple[dict[str, Any], float]:
        """Deliver ``records`` (``requests`` requests, one per record by default) through the dispatcher; the
        receiver's stats and the peak RSS (MB)."""
        expected = len(records) if requests is None else requests
        prefix, _ = self.load(records)
        reset_receiver(base_url)
        pipeline = self.dispatcher(prefix)
        try:
            wait_until(
                lambda: receiver_stats(base_url)["requests"] >= expected,
                timeout=900,
                interval=0.2,
                what="every batch delivered",
            )
            peak = peak_rss_mb(pipeline.processes["dispatcher"].pid)
        finally:
            pipeline.stop()
        return receiver_stats(base_url), peak


async def plain_httpx_aiohttp(url: str, bodies: list[bytes], concurrency: int) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:

        async def post(body: bytes) -> None:
            (await client.post(url, content=body, headers=HEADERS)).raise_for_status()

        await post_all(bodies, concurrency, post)


def baseline(base_url: str, bodies: list[bytes], concurrency: int, loop: Any) -> dict[str, Any]:
    reset_receiver(base_url)
    asyncio.run(loop(f"{base_url}/members", bodies, concurrency))
    return receiver_stats(base_url)


def single(bench: Bench, base_url: str, count: int) -> None:
    # As the extractor writes them: records of whole requests, 64 one-member requests each.
    records = batches("single", -(-count // DEFAULT_RECORD_MEMBERS), DEFAULT_RECORD_MEMBERS)
    c = bench.concurrency
    bodies = [
        httpx.Request(
            "POST", "http://x", json={k: member[k] for k in ("id", "email", "first_name", "tier", "points")}
        ).content
        for b in records
        for member in b.members
    ]
    count = len(bodies)
    raw = receiver_rate(baseline(base_url, bodies, c, plain_aiohttp))
    same_client = receiver_rate(baseline(base_url, bodies, c, plain_httpx_aiohttp))
    stats, peak = bench.run_dispatcher(base_url, records, count)
    pipeline = receiver_rate(stats)
    print(f"single-member template, {count:,} requests in records of 64, concurrency {c}:", flush=True)
    print(f"  plain aiohttp loop (raw baseline)        {raw:>9,.0f} requests/s", flush=True)
    print(
        f"  plain httpx + aiohttp transport loop     {same_client:>9,.0f} requests/s  {same_client / raw:.2f}x",
        flush=True,
    )
    print(
        f"  dispatcher (Kafka, render, HTTP, outcome) {pipeline:>8,.0f} requests/s  {pipeline / raw:.2f}x raw, "
        f"{pipeline / same_client:.2f}x same client; peak RSS {peak:.0f} MB  (target >= 0.6x raw)",
        flush=True,
    )


def batch(bench: Bench, base_url: str, count: int) -> float:
    records = batches("batch", count, BATCH_SIZE)
    c = bench.concurrency
    bodies = [httpx.Request("POST", "http://x", json=b.members).content for b in records]
    raw = receiver_rate(baseline(base_url, bodies, c, plain_aiohttp), BATCH_SIZE)
    stats, peak = bench.run_dispatcher(base_url, records)
    pipeline = receiver_rate(stats, BATCH_SIZE)
    print(
        f"batch template, {count:,} batches of {BATCH_SIZE} ({count * BATCH_SIZE:,} members), concurrency {c}:",
        flush=True,
    )
    print(f"  plain aiohttp loop (raw baseline)        {raw:>9,.0f} members/s", flush=True)
    print(
        f"  dispatcher                               {pipeline:>9,.0f} members/s  {pipeline / raw:.2f}x raw; "
        f"peak RSS {peak:.0f} MB  (target >= 100,000 members/s)",
        flush=True,
    )
    return peak


def slow(bench: Bench, count: int, delay: float, seconds: float, fast_peak: float) -> None:
    records = batches("batch", count, BATCH_SIZE)
    with lean_receiver(delay) as base_url:
        bench.point_templates_at(base_url)
        prefix, size = bench.load(records)
        pipeline = bench.dispatcher(prefix)
        pid = pipeline.processes["dispatcher"].pid
        samples = []
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # sampling memory at a steady pace, not synchronising
                samples.append(current_rss_mb(pid))
                time.sleep(0.5)
            peak = peak_rss_mb(pid)
            delivered = receiver_stats(base_url)["requests"]
        finally:
            pipeline.stop()
    print(
        f"slow endpoint ({delay:.2f} s per request), backlog {count:,} batches ({size / 1e6:.0f} MB on the topic), "
        f"{seconds:.0f} s:",
        flush=True,
    )
    print(
        f"  dispatcher delivered {delivered:,} batches; RSS min/last/peak "
        f"{min(samples):.0f}/{samples[-1]:.0f}/{peak:.0f} MB vs {fast_peak:.0f} MB peak against the fast endpoint",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=5_000, help="single-member batches")
    parser.add_argument("--batches", type=int, default=400, help="batches of 500 for the batch scenario")
    parser.add_argument("--backlog", type=int, default=1_000, help="batches of 500 waiting for the slow endpoint")
    parser.add_argument("--slow-delay", type=float, default=0.5)
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bench = Bench(bootstrap, workdir, args.concurrency)
        with lean_receiver() as base_url:
            bench.point_templates_at(base_url)
            single(bench, base_url, args.single)
            fast_peak = batch(bench, base_url, args.batches)
        slow(bench, args.backlog, args.slow_delay, args.slow_seconds, fast_peak)


if __name__ == "__main__":
    main()
