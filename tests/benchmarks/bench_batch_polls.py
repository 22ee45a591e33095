"""Benchmark: how long the dispatcher's polls wait for member-batch records already on the broker, by fetch size.

A batch run's records (500 members each, the end-to-end benchmark's columns) are produced beforehand, as the
extractor produces them (``make_producer``: lz4, ``EXPORT_KAFKA_BATCH_BYTES``), to the normal member-batch topic
(``EXPORT_TOPIC_PARTITIONS`` partitions). Then consumers built as the dispatcher builds its own (``make_consumer``,
64 records a poll) read them all back in rounds, each with a fresh group, the fetch sizes taking turns: a round
polls, decodes its records (``decode_member_batch``, as the dispatcher does), spends ``--work-ms`` away
from the consumer (the round's requests: ~150-230 ms a round of 64 records in the end-to-end runs; a sleep here, so
the consumer's IO thread has the GIL to itself, unlike the dispatcher's whole process) and commits. Prints, per
fetch size: the polls' total wait (the first poll, which joins the group, left out), how many polls waited 5 ms or
more, and the time spent decoding. Figures only.

    python -m tests.benchmarks.bench_batch_polls [--records 600] [--work-ms 180] [--repeat 2]
        [--sizes 1048576,4194304]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack

from shared.events import MemberBatch
from shared.kafka import Outgoing
from shared.kafka.clients import make_consumer, make_producer, produce
from shared.kafka.topic_setup import ensure_topics
from shared.member_batch_decoding import decode_member_batch
from shared.settings import CommonSettings
from shared.topics import Topics
from tests.benchmarks.bench_dispatcher import member
from tests.benchmarks.common import kafka_bootstrap

POLL_RECORDS = 64


def busy(seconds: float) -> None:
    """Pure-Python work for ``seconds`` on another thread, waited for: the dispatcher's event loop rendering and
    sending a round's requests (holding the GIL in turns with the consumer's IO thread) while the loop waits."""

    def spin() -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sum(range(200))

    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()


def drain(
    settings: CommonSettings,
    topics: Topics,
    records: int,
    work: Callable[[float], None],
    work_ms: float,
    fetch_bytes: int,
) -> dict[str, float]:
    """Read every record back as the dispatcher's rounds do; the polls' waits and the fetches' figures."""
    consumer = make_consumer(
        settings,
        f"polls-{uuid.uuid4().hex[:8]}",
        topics.member_batch_topics(),
        max_poll_records=POLL_RECORDS,
        max_partition_fetch_bytes=fetch_bytes,
    )
    waits: list[float] = []
    decoding = 0.0
    seen = 0
    try:
        while seen < records:
            started = time.perf_counter()
            polled = consumer.poll(timeout_ms=500, max_records=POLL_RECORDS)
            waited = time.perf_counter() - started
            batch = [r for rs in polled.values() for r in rs]
            if not batch:
                continue  # the group's join, before the first records
            if seen:  # the first poll includes the group's join
                waits.append(waited)
            started = time.perf_counter()
            for record in batch:
                decode_member_batch(record.value)
            decoding += time.perf_counter() - started
            seen += len(batch)
            work(work_ms / 1000)  # the round's requests (see the module's docstring)
            consumer.commit()
        return {
            "wait": sum(waits),
            "waits": float(sum(w >= 0.005 for w in waits)),
            "polls": float(len(waits)),
            "decoding": decoding,
        }
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=600, help="records of 500 members (600: 300,000 members)")
    parser.add_argument("--work-ms", type=float, default=180.0, help="time a round spends on its requests")
    parser.add_argument("--repeat", type=int, default=2, help="reads per fetch size, taking turns")
    parser.add_argument("--work", choices=("cpu", "sleep"), default="cpu", help="a busy thread, or a sleep")
    parser.add_argument("--sizes", default="1048576,4194304", help="max_partition_fetch_bytes values")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        topics = Topics(f"polls{uuid.uuid4().hex[:6]}.")
        settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=topics.prefix)
        ensure_topics(settings)
        producer = make_producer(settings, "polls")
        run_id = uuid.uuid4()
        values = [
            MemberBatch(
                run_id=run_id,
                definition="bench",
                template="bench",
                batch_index=index,
                members=[member(index * 500 + k) for k in range(500)],
                key_column="id",
            ).to_bytes()
            for index in range(args.records)
        ]
        topic = topics.member_batches_for("normal")
        produce(producer, [Outgoing(topic, f"{run_id}:{i}", v) for i, v in enumerate(values)]).wait()
        producer.close()
        print(
            f"{args.records} records of 500 members ({len(values[0]):,} bytes each before lz4), "
            f"{settings.topic_partitions} partitions, {POLL_RECORDS} records a poll, {args.work_ms:.0f} ms of work "
            f"a round, {args.repeat} reads per size taking turns"
        )
        results: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
        work = busy if args.work == "cpu" else time.sleep
        for _ in range(args.repeat):
            for size in sizes:
                results[size].append(drain(settings, topics, args.records, work, args.work_ms, size))
    for size, runs in results.items():
        print(
            f"max_partition_fetch_bytes {size:>10,}: polls waited "
            + ", ".join(f"{r['wait']:.2f} s ({r['waits']:.0f} of {r['polls']:.0f} polls)" for r in runs)
            + f"; decoding {statistics.median(r['decoding'] for r in runs):.2f} s"
        )


if __name__ == "__main__":
    main()
