"""Benchmark: CPU a member-batch record takes to decode, the dispatcher's decoder against the model's own.

The records are the ones ``bench_e2e`` sends (its saved query's 8 columns of the demo members, written by the
extractor's encoder): records of 500 members for the batch-of-500 template, and of
``members_per_record(1, DEFAULT_RECORD_MEMBERS)`` = 64 members for the one-member template; and the records of 500
with a field unknown to the model beside ``members`` (a copy of the members: what a newer producer might add, which
the model ignores). Each decoder decodes
every record once a round, the decoders taking turns round after round; the figure is CPU time (``process_time``) a
record, the median and the fastest of the rounds. Beside them, two baselines that validate nothing:
``orjson.loads`` and ``pydantic_core.from_json`` (jiter, the parser the model and the decoder both run). The
decoders' batches are checked equal first (untimed). Figures only.

    python -m tests.benchmarks.bench_batch_decoding [--members 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
import pydantic_core

from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.events import MemberBatch
from shared.member_batch_decoding import decode_member_batch
from shared.member_batches import members_per_record
from tests.benchmarks.bench_e2e import BATCH_SIZE, PAGE_SIZE, SELECT
from tests.benchmarks.common import member_batch_records, sqlite_store

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "MemberBatch.model_validate_json (before)": MemberBatch.model_validate_json,
    "decode_member_batch (the dispatcher's)": decode_member_batch,
    "baseline: orjson.loads": orjson.loads,
    "baseline: pydantic_core.from_json": lambda value: pydantic_core.from_json(value, cache_strings="keys"),
}


def records(store_url: str, batch_size: int) -> list[bytes]:
    """The member-batch records bench_e2e's pipeline reads for a template of ``batch_size`` members."""
    connection = sqlite3.connect(f"file:{store_url.removeprefix('sqlite:///')}?mode=ro", uri=True)
    try:
        cursor = connection.execute(f"{SELECT} ORDER BY id")
        batches = member_batch_records(
            cursor,
            template="bench",
            batch_size=members_per_record(batch_size, DEFAULT_RECORD_MEMBERS),
            page_size=PAGE_SIZE,
        )
    finally:
        connection.close()
    return [value for _, value in batches]


def with_unknown_field(value: bytes) -> bytes:
    """``value`` with a field the model does not know (``previous_members``: a copy of its members) added last, the
    record's own text kept before it."""
    members = json.dumps(json.loads(value)["members"], separators=(",", ":"), ensure_ascii=False)
    return value.rstrip()[:-1] + b',"previous_members":' + members.encode() + b"}"


def cpu_ms_a_record(decode: Callable[[bytes], Any], values: list[bytes]) -> float:
    started = time.process_time()
    for value in values:
        decode(value)
    return (time.process_time() - started) * 1000 / len(values)


def stamp() -> str:
    """The load average and the UTC time, for the figures' context."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"load average {load}, {time.strftime('%H:%M:%S', time.gmtime())} UTC"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=20_000, help="demo members (bench_e2e's cached store)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds, the decoders taking turns in each")
    args = parser.parse_args()
    store_url = sqlite_store(args.members)
    print(stamp())
    batches_of_500 = records(store_url, BATCH_SIZE)
    record_sets = {
        "batch of 500": batches_of_500,
        "one-member template": records(store_url, 1),
        "batch of 500, a 500-member field unknown to the model": [with_unknown_field(v) for v in batches_of_500],
    }
    for title, values in record_sets.items():
        for value in values:  # the same batches, or the figures mean nothing
            if decode_member_batch(value) != MemberBatch.model_validate_json(value):
                raise SystemExit("decode_member_batch and the model disagree on a record")
        members = len(MemberBatch.model_validate_json(values[0]).members)
        size = sum(map(len, values)) / len(values)
        print(f"\n{title}: {len(values)} records of {members} members, {size / 1000:.1f} KB each")
        times: dict[str, list[float]] = {name: [] for name in DECODERS}
        for _ in range(args.rounds):
            for name, decode in DECODERS.items():
                times[name].append(cpu_ms_a_record(decode, values))
        reference = statistics.median(times[next(iter(DECODERS))])
        for name, laps in times.items():
            median = statistics.median(laps)
            print(
                f"  {name:42} median {median:.4f} ms, fastest {min(laps):.4f} ms a record "
                f"({median / reference:.2f}x the model's median)"
            )
    print(f"\n{stamp()}")


if __name__ == "__main__":
    main()
