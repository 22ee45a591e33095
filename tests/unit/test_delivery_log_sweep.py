"""The notifier's wiring of per-member state: which followers fold, and the delivery log pruned after each sweep
(a failing prune logged, the sweep's work kept)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.notifier.delivery_log_sweep import outcome_followers, with_log_retention
from shared.catalog import CatalogStores
from shared.events import BatchOutcome
from shared.kafka import Outgoing


def _stores(tmp_path: Path) -> CatalogStores:
    return CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)


def test_the_log_is_a_follower_unless_its_retention_is_0(tmp_path: Path):
    stores = _stores(tmp_path)
    assert outcome_followers(stores, 30) == [stores.retries, stores.deliveries]
    assert outcome_followers(stores, 0) == [stores.retries]
    stores.close()


def test_each_sweep_prunes_the_log_and_keeps_its_own_records(tmp_path: Path):
    stores = _stores(tmp_path)
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
    swept = [Outgoing("t", "k", b"v")]
    sweep = with_log_retention(lambda: swept, stores, 7)
    assert sweep() == swept
    assert stores.deliveries.last_delivery("d", "1") is None

    def unreachable(days: float) -> int:
        raise OSError("the catalog is unreachable")

    stores.deliveries.prune = unreachable  # type: ignore[method-assign,assignment]
    assert sweep() == swept  # logged, and the sweep's own records still go out
    stores.close()
