"""Benchmark: how long a consumer loop's round waits for its outcomes' acknowledgements, by producer batch size.

A dispatcher round of a batch template produces one ``run.batch_outcome`` per batch (64 a round, each naming
the batch's 500 member keys: about 5 KB), all keyed by the run, so all to one partition of the run-events topic.
The producer keeps one request in flight and sends one batch per partition a request: with kafka-python's default
batch of 16 KiB the round's outcomes go in about 20 requests one after the other, with 512 KiB in one. The round
waits for them all before it commits and polls again: that wait is idle time between two rounds of requests.

Here the real producer (``make_producer``, acks=all, lz4) sends such rounds to a local broker, batch sizes taking
turns; prints the median and 90th percentile of the rounds' waits (send to the last ack) per batch size, and, as
the baseline, one record of the same size alone. Figures only.

    python -m tests.benchmarks.bench_round_acks [--rounds 40] [--outcomes 64] [--members 500]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from contextlib import ExitStack

from shared.events import BatchOutcome
from shared.kafka import Outgoing
from shared.kafka.clients import make_producer, produce
from shared.kafka.topic_setup import ensure_topics
from shared.settings import CommonSettings
from shared.topics import Topics
from tests.benchmarks.common import kafka_bootstrap

SIZES = (16_384, 524_288)


def outcomes(run_id: uuid.UUID, count: int, members: int, first_key: int) -> list[bytes]:
    return [
        BatchOutcome(
            run_id=run_id,
            definition="bench",
            batch_index=index,
            delivered=members,
            failed=0,
            status_code=200,
            member_keys=[str(first_key + index * members + m) for m in range(members)],
        ).to_bytes()
        for index in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="rounds per batch size (taking turns)")
    parser.add_argument("--outcomes", type=int, default=64, help="outcomes a round (the dispatcher's poll records)")
    parser.add_argument("--members", type=int, default=500, help="member keys an outcome names")
    args = parser.parse_args()
    with ExitStack() as stack:
        bootstrap = kafka_bootstrap(stack)
        topics = Topics(f"acks{uuid.uuid4().hex[:6]}.")

        def settings(batch_bytes: int = SIZES[0]) -> CommonSettings:
            return CommonSettings(
                kafka_bootstrap_servers=bootstrap,
                topic_prefix=topics.prefix,
                kafka_batch_bytes=batch_bytes,
            )

        ensure_topics(settings())
        producers = {size: make_producer(settings(size), f"acks-{size}") for size in SIZES}
        waits: dict[int | str, list[float]] = {size: [] for size in SIZES} | {"one record": []}
        run_id = uuid.uuid4()
        values = outcomes(run_id, args.outcomes, args.members, 1_000_000)
        print(f"{args.outcomes} outcomes a round, {len(values[0]):,} bytes each, one partition")
        for producer in producers.values():  # connected, metadata known
            produce(producer, [Outgoing(topics.run_events, str(run_id), values[0])]).wait()
        for _ in range(args.rounds):
            for size, producer in producers.items():
                started = time.perf_counter()
                produce(producer, [Outgoing(topics.run_events, str(run_id), v) for v in values]).wait()
                waits[size].append(time.perf_counter() - started)
            started = time.perf_counter()
            produce(producers[SIZES[0]], [Outgoing(topics.run_events, str(run_id), values[0])]).wait()
            waits["one record"].append(time.perf_counter() - started)
        for producer in producers.values():
            producer.close()
    baseline = statistics.median(waits["one record"])
    for label, times in waits.items():
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        name = f"batch {label:,} bytes" if isinstance(label, int) else f"baseline: {label}"
        ratio = median / baseline
        print(f"{name:<28} median {median * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms  ({ratio:.1f}x one record)")


if __name__ == "__main__":
    main()
