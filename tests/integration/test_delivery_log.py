"""The member delivery log's store on SQLite and PostgreSQL: the last outcome of a member across runs and
chunks of batch rows (newest first), its refusal's status and reason, and retention."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.catalog import CatalogStores, delivery_log_store
from shared.catalog.delivery_log_store import SCAN_CHUNK
from shared.events import BatchOutcome, RefusedMember
from tests.member_state_helpers import member_state_definition

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


@pytest.fixture
def log_id(catalog: CatalogStores) -> str:
    """Definition "log" in the catalog: its id, which keys the log."""
    return member_state_definition(catalog, "log")


def _outcome(run_id: uuid.UUID, index: int, keys: list[str], at: datetime, refused: Sequence[str] = ()) -> BatchOutcome:
    return BatchOutcome(
        run_id=run_id,
        definition="log",
        batch_index=index,
        delivered=len(keys) - len(refused),
        failed=len(refused),
        attempts=1,
        member_keys=keys,
        refused=[RefusedMember(key=k, status=422, reason=f"HTTP 422: {k} is invalid", attempts=3) for k in refused],
        at=at,
    )


def test_the_log_answers_the_newest_outcome_of_a_member_across_runs_and_chunks(catalog: CatalogStores, log_id: str):
    catalog.runs.followers.append(catalog.deliveries)
    old_run, new_run = uuid.uuid4(), uuid.uuid4()
    # The old run: member "7" refused in its first batch, then more batches than one scan chunk after it.
    outcomes = [_outcome(old_run, 0, ["5", "7", "9"], T0, refused=["7"])]
    outcomes += [_outcome(old_run, i, [f"x{i}", f"y{i}"], T0 + timedelta(seconds=i)) for i in range(1, SCAN_CHUNK + 10)]
    catalog.runs.fold_run_events(outcomes)
    failed = catalog.deliveries.last_delivery(log_id, "7")
    assert failed is not None
    assert (failed.delivered, failed.status, failed.reason, failed.attempts) == (
        False,
        422,
        "HTTP 422: 7 is invalid",
        3,
    )
    assert (failed.run_id, failed.batch_index, failed.at) == (str(old_run), 0, T0)
    delivered = catalog.deliveries.last_delivery(log_id, "9")
    assert delivered is not None
    assert (delivered.delivered, delivered.status, delivered.reason) == (True, None, None)
    assert catalog.deliveries.last_delivery(log_id, "77") is None  # "7" with a suffix: not "7"
    assert catalog.deliveries.last_delivery("other", "7") is None

    # A later run delivers "7" as a retry: that is its last outcome now.
    later = T0 + timedelta(hours=1)
    retried = _outcome(new_run, 0, ["7"], later).model_copy(update={"retry": True})
    catalog.runs.fold_run_events([retried])
    last = catalog.deliveries.last_delivery(log_id, "7")
    assert last is not None
    assert (last.delivered, last.run_id, last.retry, last.at) == (True, str(new_run), True, later)


def test_the_sweep_prunes_batches_older_than_the_retention(catalog: CatalogStores, log_id: str):
    catalog.runs.followers.append(catalog.deliveries)
    now = datetime.now(UTC)
    catalog.runs.fold_run_events(
        [
            _outcome(uuid.uuid4(), 0, ["old"], now - timedelta(days=31)),
            _outcome(uuid.uuid4(), 0, ["recent"], now - timedelta(days=29)),
        ]
    )
    assert catalog.deliveries.prune(30) == 1
    assert catalog.deliveries.last_delivery(log_id, "old") is None
    assert catalog.deliveries.last_delivery(log_id, "recent") is not None


def test_the_prune_deletes_in_bounded_batches_until_none_is_left(catalog: CatalogStores, log_id: str):
    catalog.runs.followers.append(catalog.deliveries)
    old = datetime.now(UTC) - timedelta(days=31)
    run_id = uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(run_id, i, [f"k{i}"], old) for i in range(7)])
    deletes: list[int] = []
    transaction = catalog.database.transaction

    def counted(kind: str | None = None, name: str | None = None) -> Any:  # each delete its own transaction
        deletes.append(1)  # how many the prune opened
        return transaction(kind, name)

    catalog.database.transaction = counted  # type: ignore[method-assign]
    assert catalog.deliveries.prune(30, batch=3) == 7
    catalog.database.transaction = transaction  # type: ignore[method-assign]
    assert len(deletes) == 3  # 3 + 3 + 1 rows: never one unbounded DELETE
    assert all(catalog.deliveries.last_delivery(log_id, f"k{i}") is None for i in range(7))


def test_a_lookup_of_a_key_the_log_lacks_reads_a_bounded_number_of_batch_rows(
    catalog: CatalogStores, log_id: str, monkeypatch: pytest.MonkeyPatch
):
    catalog.runs.followers.append(catalog.deliveries)
    run_id = uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(run_id, i, [f"k{i}"], T0 + timedelta(seconds=i)) for i in range(10)])
    monkeypatch.setattr(delivery_log_store, "SCAN_CHUNK", 2)
    monkeypatch.setattr(delivery_log_store, "MAX_SCAN", 5)
    assert catalog.deliveries.last_delivery(log_id, "k5") is not None  # among the 5 newest
    assert catalog.deliveries.last_delivery(log_id, "k4") is None  # older than the bound: not searched


def test_a_lookup_pages_through_batches_of_the_same_instant(catalog: CatalogStores, log_id: str):
    """More batch rows at one instant than a scan chunk: the keyset goes on by run and batch index."""
    catalog.runs.followers.append(catalog.deliveries)
    run_id = uuid.uuid4()
    outcomes = [_outcome(run_id, i, [f"k{i}"], T0, refused=["k0"] if i == 0 else []) for i in range(SCAN_CHUNK * 2)]
    catalog.runs.fold_run_events(outcomes)
    first = catalog.deliveries.last_delivery(log_id, "k0")
    assert first is not None
    assert (first.batch_index, first.delivered, first.status) == (0, False, 422)
    assert catalog.deliveries.last_delivery(log_id, f"k{SCAN_CHUNK + 3}") is not None
