"""The next-run retries' store on SQLite and PostgreSQL: refusals and deliveries folded from outcomes (open members
matched in memory, or by each batch's keys when there are many), and each run's fixed share of the retries."""

from __future__ import annotations

import uuid

import pytest

from shared.catalog import CatalogStores, member_retries_store
from shared.domain.member_retries import RetryState
from shared.events import BatchOutcome, RefusedMember

pytestmark = pytest.mark.integration


def _outcome(run_id: uuid.UUID, keys: list[str], refused: dict[str, int]) -> BatchOutcome:
    return BatchOutcome(
        run_id=run_id,
        definition="d",
        batch_index=0,
        delivered=len(keys) - len(refused),
        failed=len(refused),
        member_keys=keys,
        refused=[RefusedMember(key=k, status=s, reason=f"HTTP {s}", attempts=1) for k, s in refused.items()],
    )


@pytest.mark.parametrize("open_in_memory", [50_000, 0], ids=["in-memory", "by-batch-keys"])
def test_refused_members_are_pending_then_resolved_by_a_later_delivery(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch, open_in_memory: int
):
    monkeypatch.setattr(member_retries_store, "OPEN_IN_MEMORY", open_in_memory)
    catalog.runs.followers.append(catalog.retries)
    first, second = uuid.uuid4(), uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(first, ["1", "2", "3"], {"2": 503, "3": 422})])
    states = catalog.retries.states("d", ["1", "2", "3"])
    assert set(states) == {"2", "3"}
    assert states["2"].state is RetryState.PENDING
    assert states["3"].state is RetryState.GIVEN_UP  # invalid, and invalid_runs defaults to 0

    assert catalog.retries.take_retries(second, "d") == ["2"]
    assert catalog.retries.take_retries(first, "d") == []  # a run never takes the members it refused itself
    catalog.runs.fold_run_events([_outcome(second, ["2", "3", "4"], {})])
    states = catalog.retries.states("d", ["2", "3"])
    assert (states["2"].state, states["2"].last_run) == (RetryState.DELIVERED, str(second))
    assert (states["3"].state, states["3"].last_run) == (RetryState.DELIVERED, str(second))
    # Its share is fixed at its first start: the same after a resume, whatever became of the members.
    assert catalog.retries.take_retries(second, "d") == ["2"]
