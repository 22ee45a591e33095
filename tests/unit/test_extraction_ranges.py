"""Splitting a large run into key ranges: how many, where they end, their batch indexes, their partitions; a run not
split because planning its ranges failed says why, cut."""

import itertools
import uuid

import structlog
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from services.extractor.extraction import Extractor
from services.extractor.ranges import BATCH_INDEX_LIMIT, boundary_ranks, index_spaces, placed_keys, range_count
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import Checkpoint
from shared.events import REASON_MAX_CHARS, RunRequested
from shared.kafka import InFlight
from shared.querystore import QueryError
from shared.topics import Topics


def test_a_run_is_split_only_when_it_has_at_least_two_ranges_worth_of_members():
    assert range_count(499_999, range_members=250_000, partitions=6) == 1
    assert range_count(500_000, range_members=250_000, partitions=6) == 2
    assert range_count(1_000_000, range_members=250_000, partitions=6) == 4
    assert range_count(50_000_000, range_members=250_000, partitions=6) == 6  # one range a partition
    assert range_count(50_000_000, range_members=0, partitions=6) == 1  # splitting turned off
    assert range_count(50_000_000, range_members=250_000, partitions=1) == 1  # one partition: one replica at work


@given(st.integers(2, 10_000_000), st.integers(2, 48))
def test_ranges_end_at_even_ranks(members, ranges):
    ranks = boundary_ranks(members, ranges)
    assert ranks == sorted(set(ranks))
    assert all(1 <= rank < members for rank in ranks)
    assert len(ranks) <= ranges - 1
    sizes = [b - a for a, b in zip([0, *ranks], [*ranks, members], strict=True)]
    assert max(sizes) - min(sizes) <= 1 or members < ranges


@given(st.integers(2, 64), st.integers(0, 200_000_000))
def test_each_range_has_batch_indexes_of_its_own(ranges, batches):
    spaces = index_spaces(ranges, batches)
    assert spaces[0][0] == 0
    assert spaces[-1][1] == BATCH_INDEX_LIMIT
    assert all(first < end for first, end in spaces)
    assert all(end == next_first for (_, end), (next_first, _) in itertools.pairwise(spaces))
    per_range = -(-max(batches, 1) // ranges)
    assert min(end - first for first, end in spaces) >= min(per_range, BATCH_INDEX_LIMIT // ranges)


def test_batch_indexes_stay_readable():
    # 1,000,000 members in batches of 500 over 4 ranges: 500 batches a range, ranges 10,000 apart.
    assert index_spaces(4, 2_000)[:3] == [(0, 10_000), (10_000, 20_000), (20_000, 30_000)]


@given(st.uuids(), st.integers(2, 12), st.integers(1, 24))
def test_range_requests_land_on_partitions_spread_evenly(run_id: uuid.UUID, ranges, partitions):
    keys = placed_keys(run_id, ranges, partitions)
    placed = [(murmur2(key.encode()) & 0x7FFFFFFF) % partitions for key in keys]
    assert placed == [r * partitions // ranges for r in range(ranges)]
    assert len(set(keys)) == ranges
    if ranges <= partitions:
        assert len(set(placed)) == ranges  # one range a partition


class _RefusingReader:
    """A member store whose count of the query fails with a long reason (a driver quoting the query at length)."""

    def count(self, *args: object, **kwargs: object) -> int:
        raise QueryError("query 'q' failed: " + "x" * 20_000)


def test_a_run_not_split_because_planning_its_ranges_failed_logs_the_reason_cut():
    extractor = Extractor(
        definitions=None,  # type: ignore[arg-type]
        runs=None,  # type: ignore[arg-type]
        extraction=None,  # type: ignore[arg-type]
        reader=_RefusingReader(),  # type: ignore[arg-type]
        topics=Topics(),
        send=lambda records: InFlight([], timeout_seconds=0.0),
        page_size=8,
        range_members=1,
        run_request_partitions=lambda: 4,
    )
    run = RunRequested(definition="d")
    query = SavedQuery(name="q", sql="SELECT id FROM m", key_column="id")
    template = HttpTemplate(name="t", query="q", profile="p")
    checkpoint = Checkpoint(run.run_id, None, 0, 0, False)
    with structlog.testing.capture_logs() as lines:
        plan = extractor._split(
            run, ExportDefinition(name="d", query="q", template="t"), query, template, {}, None, checkpoint
        )
    assert plan is None  # extracted in one piece
    [line] = [line for line in lines if line["event"] == "run not split: planning its key ranges failed"]
    assert line["reason"].startswith("query 'q' failed: xxx")
    assert len(line["reason"]) <= REASON_MAX_CHARS
