"""Splitting a large run into key ranges that several extractor replicas extract at once.

The replica that takes a run request counts the run's members and, for a large run, cuts its keys into
ranges of equal size (the keys at even ranks), gives each range batch indexes of its own, and publishes
one :class:`shared.events.RangeRequested` a range on the run-requests topic. A range's record goes to a
partition of its own (spread evenly), and each replica holds some of the partitions: the ranges spread
over the replicas. Each range has its own checkpoint; its record is committed when the range is done, so
a replica that dies mid-range hands it over to another (after the consumer session timeout), which
resumes it from its checkpoint.
"""

from __future__ import annotations

import math
import uuid

from kafka.partitioner.default import murmur2

#: Batch indexes are 32-bit in the catalog's ledger of outcomes: every range's fit below this. The last range's end
#: (exclusive) is stored too, in a 32-bit column: 2**31 itself would not fit it on PostgreSQL (a split run with a
#: PostgreSQL catalog failed to plan its ranges).
BATCH_INDEX_LIMIT = 2**31 - 1


def range_count(members: int, *, range_members: int, partitions: int) -> int:
    """How many ranges a run of ``members`` is split into: 1 (not split) when ``range_members`` is 0 or the run
    has fewer than twice that; else one a partition of the run-requests topic (a replica takes records by
    partition), fewer when ranges would have fewer than ``range_members`` members."""
    if range_members <= 0 or partitions < 2 or members < 2 * range_members:
        return 1
    return min(partitions, members // range_members)


def boundary_ranks(members: int, ranges: int) -> list[int]:
    """The rank (1 = the first key) of the last key of every range but the last: ranges of equal size."""
    ranks = sorted({max(1, round(i * members / ranges)) for i in range(1, ranges)})
    return [rank for rank in ranks if rank < members]


def index_spaces(ranges: int, expected_batches: int) -> list[tuple[int, int]]:
    """Each range's batch indexes, [first, end): range r's start at r * S, S a power of ten at least ten times
    the batches a range should have (range 2 of a small run starts at 2,000), the last range's go up to the
    ledger's limit. So a range can grow (members added while the run runs, batches split by size) without
    reaching the next one's, and indexes stay readable in logs and templates (``run.batch_index``)."""
    per_range = max(1, math.ceil(expected_batches / ranges))
    stride = min(10 ** max(3, math.ceil(math.log10(10 * per_range))), BATCH_INDEX_LIMIT // ranges)
    return [(r * stride, (r + 1) * stride if r < ranges - 1 else BATCH_INDEX_LIMIT) for r in range(ranges)]


def placed_keys(run_id: uuid.UUID, ranges: int, partitions: int) -> list[str]:
    """A record key for each range that the producer's default partitioner (murmur2, as Kafka's Java client)
    places on partition floor(r * P / R): the ranges spread evenly over the partitions, hence over the replicas
    (the default assignor gives each replica a block of consecutive partitions)."""
    keys = []
    for index in range(ranges):
        target = index * partitions // ranges
        salt = 0
        while (murmur2(f"{run_id}:{index}:{salt}".encode()) & 0x7FFFFFFF) % partitions != target:
            salt += 1
        keys.append(f"{run_id}:{index}:{salt}")
    return keys
