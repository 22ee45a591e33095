"""``exportctl dead-letters list`` through the admin API over a dead-letter topic of many groups: how long a whole
listing takes and how many times the admin read the topic for it (before the kept listings: once a page).

The admin API in this process (the tests' in-process app: SQLite catalog, seeded, served over HTTP), reading the
dead letters of ``--prefix`` on the broker at ``--bootstrap``; exportctl as a process of this Python and
``PYTHONPATH`` (so the tree measured is the one on ``PYTHONPATH``: take turns with the code before, extracted with
``git archive``). ``--prepare`` first writes ``--groups`` dead letters (one member each, 50 runs, a reason each).

    python -m tests.benchmarks.bench_dead_letter_listing --bootstrap 127.0.0.1:9092 --prefix bench. --prepare
    python -m tests.benchmarks.bench_dead_letter_listing --bootstrap 127.0.0.1:9092 --prefix bench. --listings 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from services.admin.dependencies import DeadLetterReplays
from shared.events import DeadLetter
from shared.kafka import clients, event_publisher
from shared.kafka.event_publisher import KafkaDeadLetters
from shared.settings import CommonSettings
from tests.admin_app import in_process_api, seed
from tests.integration.test_kafka_unavailable import serving
from tests.kafka_helpers import create_topic


def prepare(settings: CommonSettings, groups: int) -> None:
    """The topic (2 partitions) and ``groups`` dead letters, each a group of its own."""
    topic = settings.topics.dead_letters
    create_topic(settings.kafka_bootstrap_servers, topic, partitions=2)
    runs = [uuid.UUID(int=i + 1) for i in range(50)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20)
    try:
        sent = []
        for i in range(groups):
            letter = DeadLetter(
                reason=f"HTTP 400: the partner refused member {i:06}",
                source_topic="t",
                service="dispatcher",
                run_id=runs[i % len(runs)],
                definition="nightly",
                members=[{"id": i}],
                at=datetime.now(UTC),
            )
            sent.append(producer.send(topic, key=str(letter.run_id).encode(), value=letter.model_dump_json().encode()))
        for future in sent:
            future.get(timeout=60)
    finally:
        producer.close()


def counted_reads() -> list[int]:
    """Counts the admin's reads of the whole topic (a versioned read that only checked the version: not one)."""
    count = [0]
    whole = clients.read_whole_topic

    def read_whole_topic(*args: Any, **kwargs: Any) -> list[bytes]:
        count[0] += 1
        return whole(*args, **kwargs)

    event_publisher.read_whole_topic = read_whole_topic  # type: ignore[attr-defined]
    unless = getattr(clients, "read_topic_unless", None)
    if unless is not None:

        def read_topic_unless(*args: Any, **kwargs: Any) -> Any:
            version, values = unless(*args, **kwargs)
            count[0] += values is not None
            return version, values

        event_publisher.read_topic_unless = read_topic_unless  # type: ignore[attr-defined]
    return count


def measure(settings: CommonSettings, listings: int) -> dict[str, Any]:
    reads = counted_reads()
    with tempfile.TemporaryDirectory() as directory, in_process_api(Path(directory)) as api:
        with api.client() as client:
            seed(client)
        api.app.state.context.replays = DeadLetterReplays(lambda: KafkaDeadLetters(settings), 900_000)
        with serving(api.app) as url:
            env = {
                **os.environ,
                "EXPORTCTL_CONFIG": "/nonexistent/exportctl.yaml",
                "EXPORT_API_URL": url,
                "EXPORT_API_TOKEN": api.tokens["viewer"],
            }
            seconds, per_listing_reads, rows = [], [], 0
            for _ in range(listings):
                before = reads[0]
                started = time.perf_counter()
                listed = subprocess.run(
                    [sys.executable, "-m", "shared.cli", "dead-letters", "list", "-o", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                seconds.append(round(time.perf_counter() - started, 2))
                per_listing_reads.append(reads[0] - before)
                rows = len(json.loads(listed.stdout))
    return {"groups": rows, "seconds": seconds, "topic_reads": per_listing_reads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--listings", type=int, default=3)
    parser.add_argument("--prepare", action="store_true")
    args = parser.parse_args()
    settings = CommonSettings(kafka_bootstrap_servers=args.bootstrap, topic_prefix=args.prefix, metrics_port=0)
    if args.prepare:
        prepare(settings, args.groups)
    print(json.dumps(measure(settings, args.listings)))


if __name__ == "__main__":
    main()
