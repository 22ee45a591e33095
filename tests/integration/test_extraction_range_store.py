"""The extraction store's key ranges of split runs, on SQLite and real PostgreSQL."""

import threading
import uuid
from dataclasses import replace

import pytest

from shared.catalog import CatalogStores
from shared.domain.checkpoints import RangeCheckpoint, RangeState, RunTotals

pytestmark = pytest.mark.integration


def _plan(run_id: uuid.UUID, ranges: int = 3) -> list[RangeCheckpoint]:
    bounds = [None, *range(100, 100 * ranges, 100), None]
    return [
        RangeCheckpoint.planned(run_id, r, bounds[r], bounds[r + 1], r * 1000, (r + 1) * 1000) for r in range(ranges)
    ]


def test_a_run_is_planned_once_whoever_plans_it_again(catalog: CatalogStores):
    run_id = uuid.uuid4()
    catalog.extraction.claim_extraction(run_id, "big")
    first = catalog.extraction.plan_ranges(run_id, _plan(run_id, 3))
    again = catalog.extraction.plan_ranges(run_id, _plan(run_id, 5))
    assert again == first == _plan(run_id, 3)
    assert catalog.extraction.claim_extraction(run_id, "big").ranges == 3
    assert catalog.extraction.run_ranges(run_id) == first
    assert catalog.extraction.run_ranges(uuid.uuid4()) == []


def test_a_ranges_progress_only_moves_forward(catalog: CatalogStores):
    run_id = uuid.uuid4()
    catalog.extraction.claim_extraction(run_id, "big")
    [_, second, _] = catalog.extraction.plan_ranges(run_id, _plan(run_id))
    ahead = replace(second, last_key=150, next_batch_index=1010, members=5000)
    assert catalog.extraction.save_range(ahead)
    assert not catalog.extraction.save_range(replace(second, last_key=120, next_batch_index=1004, members=2000))
    assert catalog.extraction.range_checkpoint(run_id, 1) == ahead
    assert ahead.resume_after == 150
    assert second.resume_after == 100
    catalog.extraction.finish_range(ahead, RangeState.STOPPED)
    assert not catalog.extraction.save_range(replace(ahead, next_batch_index=1020))  # an ended range stays ended


def test_the_last_range_to_end_gets_the_runs_totals_once(catalog: CatalogStores):
    run_id = uuid.uuid4()
    catalog.extraction.claim_extraction(run_id, "big")
    ranges = catalog.extraction.plan_ranges(run_id, _plan(run_id, 6))
    done = [
        replace(r, last_key=r.upper, next_batch_index=r.first_batch_index + 7, members=3000 + r.range_index)
        for r in ranges
    ]
    assert [catalog.extraction.finish_range(r, RangeState.EXTRACTED) for r in done[:4]] == [None] * 4
    results: list[RunTotals | None] = []
    barrier = threading.Barrier(2)

    def finish(checkpoint: RangeCheckpoint) -> None:
        barrier.wait()
        results.append(catalog.extraction.finish_range(checkpoint, RangeState.EXTRACTED))

    threads = [threading.Thread(target=finish, args=(r,)) for r in done[4:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = RunTotals(members=sum(r.members for r in done), batches=6 * 7)
    assert sorted(results, key=str) == [None, totals]  # the two last ranges end at once: one of them tells
    assert catalog.extraction.finish_range(done[0], RangeState.EXTRACTED) == totals  # a redelivered range: again


def test_a_stopped_range_means_no_totals(catalog: CatalogStores):
    run_id = uuid.uuid4()
    catalog.extraction.claim_extraction(run_id, "big")
    first, second = catalog.extraction.plan_ranges(run_id, _plan(run_id, 2))
    assert catalog.extraction.finish_range(first, RangeState.STOPPED) is None
    assert catalog.extraction.finish_range(second, RangeState.EXTRACTED) is None
    assert catalog.extraction.range_checkpoint(run_id, 0).state is RangeState.STOPPED
