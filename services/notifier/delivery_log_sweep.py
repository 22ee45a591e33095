"""The member delivery log's retention, kept by the notifier's sweep; the fold's per-member followers."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from shared.catalog import CatalogStores
from shared.catalog.runs_store import OutcomeFollower
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)


def outcome_followers(stores: CatalogStores, delivery_log_days: float) -> list[OutcomeFollower]:
    """What the fold writes per member: retries of refused members always, the delivery log unless off (0 days)."""
    followers: list[OutcomeFollower] = [stores.retries]
    if delivery_log_days > 0:
        followers.append(stores.deliveries)
    return followers


def with_log_retention(
    sweep: Callable[[], list[Outgoing]], stores: CatalogStores, delivery_log_days: float
) -> Callable[[], list[Outgoing]]:
    """The sweep, then the delivery log's rows older than ``delivery_log_days`` pruned (every row when 0), and
    the retries no run needs any more (resolved members, runs' claims: ``SqlMemberRetries.prune``)."""

    def swept() -> list[Outgoing]:
        outgoing = sweep()
        try:
            retries = stores.retries.prune()
        except Exception:  # as below: the next sweep prunes
            log.exception("pruning the member retries failed")
        else:
            if retries:
                log.info("member retries pruned", rows=retries)
        try:
            pruned = stores.deliveries.prune(delivery_log_days)
        except Exception:  # the next sweep prunes; a sweep's other work must not be lost to it
            log.exception("pruning the member delivery log failed")
        else:
            if pruned:
                log.info("member delivery log pruned", batches=pruned, retention_days=delivery_log_days)
        return outgoing

    return swept
