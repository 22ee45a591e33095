"""The notifier's wiring of per-member state: which followers fold, and the delivery log pruned after each sweep
(a failing prune logged, the sweep's work kept), and the retries no run needs pruned."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from services.notifier.delivery_log_sweep import outcome_followers, with_log_retention
from shared.catalog import CatalogStores
from shared.catalog.member_tables import MemberRetryRow
from shared.domain.member_retries import RetryState
from shared.events import BatchOutcome, RefusedMember
from shared.kafka import Outgoing
from tests.member_state_helpers import member_state_definition


def _stores(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> CatalogStores:
    return migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")


def test_the_log_is_a_follower_unless_its_retention_is_0(
    tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]
):
    stores = _stores(tmp_path, migrated_catalog)
    assert outcome_followers(stores, 30) == [stores.retries, stores.deliveries]
    assert outcome_followers(stores, 0) == [stores.retries]
    stores.close()


def test_each_sweep_prunes_the_log_and_keeps_its_own_records(
    tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]
):
    stores = _stores(tmp_path, migrated_catalog)
    d = member_state_definition(stores, "d")
    stores.runs.followers.append(stores.deliveries)
    old = BatchOutcome(
        run_id=uuid.uuid4(),
        definition="d",
        batch_index=0,
        delivered=1,
        failed=0,
        member_keys=["1"],
        at=datetime.now(UTC) - timedelta(days=8),
    )
    stores.runs.fold_run_events([old])
    assert stores.deliveries.last_delivery(d, "1") is not None
    swept = [Outgoing("t", "k", b"v")]
    sweep = with_log_retention(lambda: swept, stores, 7)
    assert sweep() == swept
    assert stores.deliveries.last_delivery(d, "1") is None

    def unreachable(days: float) -> int:
        raise OSError("the catalog is unreachable")

    stores.deliveries.prune = unreachable  # type: ignore[method-assign,assignment]
    assert sweep() == swept  # logged, and the sweep's own records still go out
    stores.close()


def test_each_sweep_prunes_the_retries_no_run_needs(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]):
    stores = _stores(tmp_path, migrated_catalog)
    d = member_state_definition(stores, "d")
    stores.runs.followers.append(stores.retries)
    refused = BatchOutcome(
        run_id=uuid.uuid4(),
        definition="d",
        batch_index=0,
        delivered=0,
        failed=1,
        member_keys=["1"],
        refused=[RefusedMember(key="1", status=503, reason="HTTP 503", attempts=1)],
    )
    delivered = BatchOutcome(
        run_id=uuid.uuid4(), definition="d", batch_index=0, delivered=1, failed=0, member_keys=["1"]
    )
    stores.runs.fold_run_events([refused])
    stores.runs.fold_run_events([delivered])
    assert stores.retries.states(d, ["1"])["1"].state is RetryState.DELIVERED
    with stores.database.transaction() as session:
        session.execute(update(MemberRetryRow).values(updated_at=datetime.now(UTC) - timedelta(days=8)))
    with_log_retention(list, stores, 30)()
    assert stores.retries.states(d, ["1"]) == {}  # resolved 8 days ago: pruned
    stores.close()
