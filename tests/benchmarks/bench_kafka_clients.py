"""Benchmark (issue 18): the Kafka client's own cost in the dispatcher's and the extractor's patterns, kafka-python
(the project's client) against confluent-kafka (librdkafka, C, releases the GIL), same bytes, same settings.

On 2 cores each service is one Python interpreter: kafka-python's fetch, record parsing, lz4 and producer run in
Python threads that take the GIL from the dispatcher's request event loop. This measures how much CPU, and how much
of the interpreter, each client takes for the same work, before anyone ports ``shared/kafka`` (a benchmark only:
nothing of the services changes). Three patterns, on a real local broker:

- ``batch``: the dispatcher's rounds on a batch template. Member-batch records of 500 members (the bytes
  :class:`shared.member_batches.BatchEncoder` writes, ~80 KB), already on the broker, are polled 64 a poll (the
  dispatcher's ``EXPORT_DISPATCHER_POLL_RECORDS``) by a consumer of a fresh group; for each record an outcome
  (``BatchOutcome.to_bytes`` naming the batch's 500 member keys, ~4.8 KB) is produced, keyed by the run; the round
  flushes the producer, waits for every acknowledgement, then commits the round's offsets and waits for the answer
  (``ConsumerLoop`` with one round in flight). 2,000 records is the 1,000,000-member run.
- ``single``: the same on a one-member template's records: 64 one-member requests a record (the extractor's
  ``EXPORT_EXTRACTOR_RECORD_MEMBERS``), 64 records a poll (``EXPORT_DISPATCHER_ROUND_REQUESTS`` 4,096 / 64), an
  outcome of 64 keys a record. 938 records is the 60,000-request run.
- ``produce``: the extractor's pages: 500-member records sent a page (5,000 members: 10 records) at a time, page
  N's acknowledgements waited for after page N+1 was handed over, the last one at the end.

kafka-python runs as the services build it (``make_consumer``, ``make_producer``, ``produce``); confluent-kafka is
given the same settings where both have them: acks=all, linger 5 ms, 512 KiB batches, lz4, one request in flight,
no idempotence, the 120 s delivery timeout, 4 MiB requests, the murmur2 partitioner (kafka-python's, so keyed
records land where the services' do); the consumer without auto commit, from the earliest offset, a 10 s session,
fetches of 1 MiB a partition (both clients' default) and 500 ms at most. librdkafka prefetches into a queue of its
own (``queued.max.messages.kbytes``: 64 MiB by default, one queue for a group's consumer), which kafka-python does
not: the peak RSS shows it.

Each turn runs in a fresh process per client, so its CPU is the client's alone: the process's (user+sys), the main
thread's (which polls, produces and commits, as the consumer loop's thread does) and the rest, the client's own
threads. The clock starts when the first records arrive (a fresh group's join and the first fetch are left out, for
both clients; ``setup`` is that CPU). "On Python threads" is the CPU of the threads that run Python, an upper bound of
the time the client holds the GIL: all of kafka-python's (its network thread is a Python thread), confluent-kafka's
main thread only (librdkafka's threads never take the GIL; its callbacks and messages are made on the polling
thread). Each turn runs twice: ``idle``, the client alone, and ``busy``, beside a thread counting in pure Python as the
dispatcher's event loop would be busy (a worst case: the loop is not always busy while a round is polled): its count
against its count alone, measured in the same process before and after, is the share of a core the event loop still
gets (noisy where other processes share the cores: the counter loses their time too), and the client's records/s
there show what a busy interpreter does to the client. Clients take turns, the order alternating; medians over the
turns; ratios confluent / kafka-python.

    python -m tests.benchmarks.bench_kafka_clients [--turns 3] [--batch-records 2000] [--single-records 938]
        [--produce-records 2000] [--patterns batch single produce] [--modes idle busy]

confluent-kafka is an optional extra (``pip install -e '.[bench]'``; ``make bench`` installs it), never a runtime
dependency. ``KAFKA_BOOTSTRAP_SERVERS`` reuses a running broker; otherwise a local one is started.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.events import Priority
from shared.member_batches import BatchEncoder, members_per_record
from shared.querystore.demo_data import COLUMNS as DEMO_COLUMNS
from shared.querystore.demo_data import generate_rows
from shared.settings import CommonSettings
from tests.benchmarks.bench_e2e import BATCH_SIZE, COLUMNS, PAGE_SIZE
from tests.benchmarks.bench_round_acks import outcomes as batch_outcomes
from tests.benchmarks.common import MAX_RECORD_BYTES

#: The dispatcher's records a poll (``EXPORT_DISPATCHER_POLL_RECORDS``; one-member rounds: 4,096 requests / 64).
POLL_RECORDS = 64
#: The extractor's page (``EXPORT_EXTRACTOR_PAGE_SIZE``), in records of 500 members.
PAGE_RECORDS = PAGE_SIZE // BATCH_SIZE
PATTERNS = ("batch", "single", "produce")
MODES = ("idle", "busy")
CLIENTS = ("kafka-python", "confluent")
#: How long the counter thread counts alone, to know its rate without a client.
CALIBRATION_SECONDS = 1.0
#: The longest a turn may take before it is abandoned.
TURN_TIMEOUT_SECONDS = 300.0
#: The README's measured totals (Performance, sessions 37-39): the dispatcher's CPU-s for a 1,000,000-member batch
#: run and a 60,000-request one-member run, the extractor's for 1,000,000 members.
DISPATCHER_BATCH_CPU_S = (3.1, 3.4)
DISPATCHER_SINGLE_CPU_S = (7.4, 8.2)
EXTRACTOR_BATCH_CPU_S = (2.7, 2.8)

MISSING = (
    "confluent-kafka is not installed: it is an optional extra for benchmarks only. Install it with "
    "`pip install -e '.[bench]'` (`make bench` does), then run this again."
)


def confluent_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# --- the records ------------------------------------------------------------------------------------------------


def records_of(count: int, members_a_record: int, run_id: uuid.UUID) -> list[tuple[bytes, bytes]]:
    """``count`` member-batch records (key, value) of ``members_a_record`` demo members, with the columns of the
    end-to-end benchmark's query, as the extractor writes them (its keys: ``run:index``)."""
    encoder = BatchEncoder(
        run_id=run_id,
        definition="bench",
        template="bench",
        priority=Priority.NORMAL,
        batch_size=members_a_record,
        max_record_bytes=MAX_RECORD_BYTES,
        key_column="id",
    )
    records: list[tuple[bytes, bytes]] = []
    picked = [DEMO_COLUMNS.index(column) for column in COLUMNS]  # the end-to-end benchmark's query's columns
    for rows in generate_rows(count * members_a_record, chunk=members_a_record * 20):
        selected = [tuple(row[i] for i in picked) for row in rows]
        for batch in encoder.encode_page(COLUMNS, selected, len(records)):
            records.append((f"{run_id}:{batch.batch_index}".encode(), batch.value))
    return records


# --- CPU, per thread ---------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Counter(threading.Thread):
    """Pure-Python work as the dispatcher's event loop does it: it runs only while it holds the GIL and a core."""

    def __init__(self) -> None:
        super().__init__(name="bench-counter", daemon=True)
        self.count = 0
        self.cpu = 0.0  # its own CPU seconds, as of its last few hundred microseconds
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            for _ in range(200):
                pass
            self.count += 1
            if not self.count & 63:
                self.cpu = time.thread_time()

    def rate_alone(self, seconds: float = CALIBRATION_SECONDS) -> float:
        """Counts a second while nothing else of the process runs."""
        before, started = self.count, time.perf_counter()
        time.sleep(seconds)
        return (self.count - before) / (time.perf_counter() - started)


@dataclass
class Window:
    """An instant of a turn: wall clock, the process's CPU, the main thread's, the counter's CPU and count."""

    wall: float
    cpu: float
    main: float
    counter_cpu: float
    count: int

    @staticmethod
    def now(counter: Counter | None) -> Window:
        """Taken on the main thread."""
        return Window(
            time.perf_counter(),
            time.process_time(),
            time.thread_time(),
            counter.cpu if counter else 0.0,
            counter.count if counter else 0,
        )

    def client_cpu_since(self, earlier: Window) -> float:
        """The process's CPU since ``earlier``, the counter thread's left out."""
        return (self.cpu - earlier.cpu) - (self.counter_cpu - earlier.counter_cpu)


def figures(
    created: Window, start: Window, end: Window, records: int, counter: Counter | None, alone: float
) -> dict[str, Any]:
    """A turn's figures: from ``start`` (the first records) to ``end``; ``created`` is before the clients were."""
    wall = end.wall - start.wall
    cpu = end.client_cpu_since(start)
    main = end.main - start.main
    if counter is not None:  # its rate alone after the turn too: the better of the two is the reference
        alone = max(alone, counter.rate_alone())
        counter.stopped = True
    share = (end.count - start.count) / wall / alone if counter is not None and alone else None
    return {
        "records": records,
        "wall": wall,
        "cpu": cpu,
        "main_cpu": main,
        "client_threads_cpu": cpu - main,
        "setup_cpu": start.client_cpu_since(created),
        "share": share,
        "rss_mb": peak_rss_mb(),
    }


# --- the patterns, on each client --------------------------------------------------------------------------------


def settings_for(bootstrap: str) -> CommonSettings:
    return CommonSettings(kafka_bootstrap_servers=bootstrap)


def confluent_producer_config(settings: CommonSettings, client_id: str) -> dict[str, Any]:
    """``make_producer``'s settings in librdkafka's words (PLAINTEXT only: the benchmark's broker)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": settings.kafka_batch_bytes,
        "compression.type": "none" if settings.kafka_compression == "none" else settings.kafka_compression,
        "max.in.flight.requests.per.connection": 1,
        "delivery.timeout.ms": settings.kafka_delivery_timeout_ms,
        "message.max.bytes": 4 * 1024 * 1024,
        "enable.idempotence": False,
        # kafka-python's (and Java's) partitioner: a run's keyed events land on the partition the others' do.
        "partitioner": "murmur2_random",
    }


def confluent_consumer_config(settings: CommonSettings, group: str) -> dict[str, Any]:
    """``make_consumer``'s settings in librdkafka's words."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group,
        "client.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 600_000,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "max.partition.fetch.bytes": 1024 * 1024,  # kafka-python's default
        "fetch.wait.max.ms": 500,  # kafka-python's fetch_max_wait_ms
    }


@dataclass
class Job:
    """One turn's work, handed to a worker process."""

    client: str
    pattern: str
    busy: bool
    bootstrap: str
    source: str  # the topic read (batch, single) or written (produce)
    events: str  # the outcomes' topic
    data: str  # the pickle of records and outcomes
    records: int


def _start(busy: bool) -> tuple[Counter | None, float]:
    """The counter thread (busy mode) and its rate alone, before any client exists."""
    if not busy:
        return None, 0.0
    counter = Counter()
    counter.start()
    deadline = time.monotonic() + 10.0
    while not counter.count:  # running: it has counted once (the GIL handed over), within a deadline
        if time.monotonic() > deadline:
            raise SystemExit("the counting thread did not start within 10 s")
        time.sleep(0.001)
    return counter, counter.rate_alone()


def consume_kafka_python(job: Job, outcomes: list[bytes], run_key: str) -> dict[str, Any]:
    from kafka.structs import OffsetAndMetadata

    from shared.kafka import Outgoing
    from shared.kafka.clients import make_consumer, make_producer, produce

    counter, alone = _start(job.busy)
    settings = settings_for(job.bootstrap)
    created = Window.now(counter)
    consumer = make_consumer(settings, f"bench-{uuid.uuid4().hex[:8]}", [job.source], max_poll_records=POLL_RECORDS)
    producer = make_producer(settings, "bench-outcomes")
    produce(producer, [Outgoing(job.events, run_key, b"warm-up")]).wait()  # connected, the topic's metadata known
    seen = 0
    start: Window | None = None
    deadline = time.monotonic() + TURN_TIMEOUT_SECONDS
    try:
        while seen < job.records and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500, max_records=POLL_RECORDS)
            if not polled:
                continue
            if start is None:
                start = Window.now(counter)
            offsets = {}
            outgoing = []
            for partition, records in polled.items():
                for record in records:
                    assert record.value is not None
                    outgoing.append(Outgoing(job.events, run_key, outcomes[seen % len(outcomes)]))
                    seen += 1
                offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, None, -1)
            sent = produce(producer, outgoing)
            producer.flush()  # the loop flushes what the broker has not answered (ConsumerLoop._flush_unanswered)
            sent.wait()
            consumer.commit(offsets)
        end = Window.now(counter)
    finally:
        producer.close()
        consumer.close()
    if start is None or seen < job.records:
        raise RuntimeError(f"read {seen} of {job.records} records in {TURN_TIMEOUT_SECONDS:.0f} s")
    return figures(created, start, end, seen, counter, alone)


def consume_confluent(job: Job, outcomes: list[bytes], run_key: str) -> dict[str, Any]:
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    counter, alone = _start(job.busy)
    settings = settings_for(job.bootstrap)
    created = Window.now(counter)
    consumer = Consumer(confluent_consumer_config(settings, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([job.source])
    producer = Producer(confluent_producer_config(settings, "bench-outcomes"))
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer.produce(job.events, b"warm-up", run_key.encode(), on_delivery=delivered)
    producer.flush(30)
    seen = 0
    start: Window | None = None
    deadline = time.monotonic() + TURN_TIMEOUT_SECONDS
    key = run_key.encode()
    try:
        while seen < job.records and time.monotonic() < deadline:
            # What is there, as kafka-python's poll returns it: consume() alone waits for all 64 or its timeout.
            first = consumer.poll(0.5)
            if first is None:
                continue
            messages = [first, *consumer.consume(num_messages=POLL_RECORDS - 1, timeout=0)]
            if start is None:
                start = Window.now(counter)
            offsets: dict[tuple[str, int], int] = {}
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(str(message.error()))
                assert message.value() is not None
                producer.produce(job.events, outcomes[seen % len(outcomes)], key, on_delivery=delivered)
                seen += 1
                offsets[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
            if producer.flush(120) or failures:  # every outcome acknowledged, as the loop waits before it commits
                raise RuntimeError(f"outcomes not acknowledged: {failures[:3]}")
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        end = Window.now(counter)
    finally:
        producer.flush(10)
        consumer.close()
    if start is None or seen < job.records:
        raise RuntimeError(f"read {seen} of {job.records} records in {TURN_TIMEOUT_SECONDS:.0f} s")
    return figures(created, start, end, seen, counter, alone)


def pages(records: list[tuple[bytes, bytes]], count: int) -> Iterator[list[tuple[bytes, bytes]]]:
    for first in range(0, count, PAGE_RECORDS):
        yield [records[i % len(records)] for i in range(first, min(first + PAGE_RECORDS, count))]


def produce_kafka_python(job: Job, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    from shared.kafka import Outgoing
    from shared.kafka.clients import InFlight, make_producer, produce

    counter, alone = _start(job.busy)
    settings = settings_for(job.bootstrap)
    created = Window.now(counter)
    producer = make_producer(settings, "bench-extractor")
    produce(producer, [Outgoing(job.source, "warm-up", b"warm-up")]).wait()
    start = Window.now(counter)
    in_flight: InFlight | None = None
    try:
        for page in pages(records, job.records):
            sent = produce(producer, [Outgoing(job.source, key.decode(), value) for key, value in page])
            if in_flight is not None:  # page N is waited for once page N+1 is handed over (the extractor's way)
                in_flight.wait()
            in_flight = sent
        if in_flight is not None:
            in_flight.wait()
        end = Window.now(counter)
    finally:
        producer.close()
    return figures(created, start, end, job.records, counter, alone)


def produce_confluent(job: Job, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    from confluent_kafka import KafkaError, Producer

    counter, alone = _start(job.busy)
    settings = settings_for(job.bootstrap)
    created = Window.now(counter)
    producer = Producer(confluent_producer_config(settings, "bench-extractor"))
    waiting: dict[int, int] = {}  # records of each page not yet acknowledged
    failures: list[KafkaError] = []

    def delivered(page: int, error: KafkaError | None, _message: Any) -> None:
        waiting[page] -= 1
        if error is not None:
            failures.append(error)

    producer.produce(job.source, b"warm-up", b"warm-up")
    producer.flush(30)
    start = Window.now(counter)

    def wait_for(page: int) -> None:
        """Until every record of ``page`` is acknowledged (served by the producer's poll, as callbacks)."""
        deadline = time.monotonic() + 120
        while waiting[page] > 0:
            producer.poll(0.1)
            if failures or time.monotonic() > deadline:
                raise RuntimeError(f"records not acknowledged: {failures[:3]}")

    try:
        for index, page in enumerate(pages(records, job.records)):
            waiting[index] = len(page)
            on_delivery = partial(delivered, index)
            for key, value in page:
                producer.produce(job.source, value, key, on_delivery=on_delivery)
            if index:  # page N waited for once page N+1 is handed over
                wait_for(index - 1)
        wait_for(len(waiting) - 1)
        end = Window.now(counter)
    finally:
        producer.flush(10)
    return figures(created, start, end, job.records, counter, alone)


def work(job: Job) -> dict[str, Any]:
    """One turn, in this process."""
    with open(job.data, "rb") as file:
        data = pickle.load(file)
    if job.pattern == "produce":
        run = produce_confluent if job.client == "confluent" else produce_kafka_python
        return run(job, data["records"])
    consume = consume_confluent if job.client == "confluent" else consume_kafka_python
    return consume(job, data["outcomes"], data["run_key"])


# --- the turns ---------------------------------------------------------------------------------------------------


def run_turn(job: Job) -> dict[str, Any]:
    """One turn in a fresh process (its CPU the client's alone); its figures."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_kafka_clients", "--worker", json.dumps(job.__dict__)],
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_SECONDS + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{job.client} {job.pattern} turn failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def prepare(bootstrap: str, args: argparse.Namespace, directory: Path) -> dict[str, dict[str, Any]]:
    """The topics and data files of each pattern: member-batch records put on the broker for the consumers (by
    kafka-python as the extractor does), outcomes, the records the producers send."""
    from shared.kafka import Outgoing
    from shared.kafka.clients import make_producer, produce
    from tests.benchmarks.common import new_topic

    settings = settings_for(bootstrap)
    events = new_topic(bootstrap)
    prepared: dict[str, dict[str, Any]] = {}
    for pattern in args.patterns:
        run_id = uuid.uuid4()
        members = BATCH_SIZE if pattern in ("batch", "produce") else members_per_record(1, DEFAULT_RECORD_MEMBERS)
        count = {"batch": args.batch_records, "single": args.single_records, "produce": args.produce_records}[pattern]
        distinct = count if pattern != "produce" else min(count, 400)  # sent again in turn: the bytes of a run
        records = records_of(distinct, members, run_id)
        topic = new_topic(bootstrap)
        if pattern != "produce":
            producer = make_producer(settings, "bench-prepare")
            produce(producer, [Outgoing(topic, key.decode(), value) for key, value in records]).wait()
            producer.close()
        data: dict[str, Any] = {
            "records": records if pattern == "produce" else [],
            # The keys of a 1,000,000-member run's second half (7 digits, as most of its keys are).
            "outcomes": batch_outcomes(run_id, min(count, 400), members, first_key=500_000),
            "run_key": str(run_id),
        }
        path = directory / f"{pattern}.pickle"
        path.write_bytes(pickle.dumps(data))
        sizes = [len(value) for _, value in records]
        outcome = len(data["outcomes"][0])
        print(
            f"{pattern}: {count:,} records of {members} members ({statistics.mean(sizes) / 1000:.1f} KB each), "
            f"outcomes {outcome:,} bytes",
            flush=True,
        )
        prepared[pattern] = {"topic": topic, "events": events, "data": str(path), "records": count}
    return prepared


def median_of(turns: list[dict[str, Any]], field: str) -> float:
    values = [t[field] for t in turns if t.get(field) is not None]
    return statistics.median(values) if values else float("nan")


def gil_cpu(client: str, turn: dict[str, Any]) -> float:
    """The CPU a turn's client spent on Python threads, an upper bound of its time holding the GIL: all of
    kafka-python's (its network thread is a Python thread too); confluent-kafka's main thread only (librdkafka's own
    threads never take the GIL; its callbacks and Message objects run on the thread that polls)."""
    return float(turn["cpu"] if client == "kafka-python" else turn["main_cpu"])


Key = tuple[str, str, str]


def report(results: dict[Key, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print()
    print(
        "| pattern (records) | mode | client | records/s (turns) | CPU-s | main thread | other threads "
        "| µs CPU a record | µs on Python threads a record | event loop's share | setup CPU-s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    per_record: dict[Key, float] = {}
    gil: dict[Key, float] = {}
    for key, turns in results.items():
        pattern, mode, client = key
        rates = sorted(t["records"] / t["wall"] for t in turns)
        per_record[key] = statistics.median(t["cpu"] / t["records"] for t in turns)
        gil[key] = statistics.median(gil_cpu(client, t) / t["records"] for t in turns)
        shares = sorted(t["share"] for t in turns if t.get("share") is not None)
        share = f"{statistics.median(shares):.2f} ({shares[0]:.2f}-{shares[-1]:.2f})" if shares else "-"
        print(
            f"| {pattern} ({turns[0]['records']:,}) | {mode} | {client} | {statistics.median(rates):,.0f} "
            f"({rates[0]:,.0f}-{rates[-1]:,.0f}) | {median_of(turns, 'cpu'):.2f} | {median_of(turns, 'main_cpu'):.2f} "
            f"| {median_of(turns, 'client_threads_cpu'):.2f} | {per_record[key] * 1e6:,.0f} | {gil[key] * 1e6:,.0f} "
            f"| {share} | {median_of(turns, 'setup_cpu'):.2f} | {median_of(turns, 'rss_mb'):.0f} |"
        )
    print()
    for pattern in args.patterns:
        for mode in args.modes:
            kp, cf = (pattern, mode, "kafka-python"), (pattern, mode, "confluent")
            if kp not in results or cf not in results:
                continue
            rate = statistics.median(t["records"] / t["wall"] for t in results[cf]) / statistics.median(
                t["records"] / t["wall"] for t in results[kp]
            )
            print(
                f"{pattern}, {mode}: confluent / kafka-python: records/s {rate:.2f}x, CPU a record "
                f"{per_record[cf] / per_record[kp]:.2f}x, on Python threads a record {gil[cf] / gil[kp]:.2f}x"
            )
    print()
    estimates(per_record, gil, args)


def estimates(per_record: dict[Key, float], gil: dict[Key, float], args: argparse.Namespace) -> None:
    """What the savings a record come to in the README's end-to-end runs, against their measured totals."""
    cases = (
        ("dispatcher, 1,000,000 members in batches of 500 (2,000 records)", "batch", 2_000, DISPATCHER_BATCH_CPU_S),
        ("dispatcher, 60,000 one-member requests (938 records)", "single", 938, DISPATCHER_SINGLE_CPU_S),
        ("extractor, 1,000,000 members (2,000 records)", "produce", 2_000, EXTRACTOR_BATCH_CPU_S),
    )
    for title, pattern, records, (low, high) in cases:
        for mode in args.modes:
            kp, cf = (pattern, mode, "kafka-python"), (pattern, mode, "confluent")
            if kp not in per_record or cf not in per_record:
                continue
            saved = (per_record[kp] - per_record[cf]) * records
            print(
                f"{title}, {mode}: kafka-python {per_record[kp] * records:.2f} CPU-s, confluent "
                f"{per_record[cf] * records:.2f}: {saved:.2f} CPU-s saved ({saved / high * 100:.0f}-"
                f"{saved / low * 100:.0f}% of the measured {low}-{high}); on Python threads "
                f"{gil[kp] * records:.2f} against {gil[cf] * records:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=3, help="turns per client, pattern and mode (alternating)")
    parser.add_argument("--batch-records", type=int, default=2_000, help="500-member records consumed a turn")
    parser.add_argument("--single-records", type=int, default=938, help="64-request one-member records a turn")
    parser.add_argument("--produce-records", type=int, default=2_000, help="500-member records produced a turn")
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(work(Job(**json.loads(args.worker)))))
        return
    if not confluent_available():
        raise SystemExit(MISSING)
    # A stopped benchmark closes its broker and files (the ExitStack) rather than leaving them behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import confluent_kafka
    import kafka

    from devtools.kafka_broker import LocalKafka

    started = time.time()
    print(
        f"kafka-python {kafka.__version__}; confluent-kafka {confluent_kafka.__version__} (librdkafka "
        f"{confluent_kafka.libversion()[0]}); {os.cpu_count()} cores; load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC",
        flush=True,
    )
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-kafka-")))
        prepared = prepare(bootstrap, args, directory)
        for turn in range(args.turns):
            order = CLIENTS if turn % 2 == 0 else CLIENTS[::-1]
            for pattern in args.patterns:
                for mode in args.modes:
                    for client in order:
                        spec = prepared[pattern]
                        job = Job(
                            client=client,
                            pattern=pattern,
                            busy=mode == "busy",
                            bootstrap=bootstrap,
                            source=spec["topic"],
                            events=spec["events"],
                            data=spec["data"],
                            records=spec["records"],
                        )
                        result = run_turn(job)
                        results.setdefault((pattern, mode, client), []).append(result)
                        share = "" if result["share"] is None else f", event loop share {result['share']:.2f}"
                        print(
                            f"turn {turn + 1} {pattern} {mode} {client}: {result['records'] / result['wall']:,.0f} "
                            f"records/s, {result['cpu']:.2f} CPU-s{share}",
                            flush=True,
                        )
    print(
        f"\nturns: {args.turns} per client, pattern and mode; {time.time() - started:.0f} s; load average now "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.strftime('%H:%M:%S', time.gmtime())} UTC"
    )
    report(results, args)


if __name__ == "__main__":
    main()
