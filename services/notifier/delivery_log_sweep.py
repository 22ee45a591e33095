"""The retention of per-member and per-run state, kept by the notifier's sweep; the fold's per-member followers."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from shared.catalog import CatalogStores
from shared.catalog.change_runs_retention import prune_change_runs
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
    """The sweep, then the retries no run needs any more (resolved members, runs' claims:
    ``SqlMemberRetries.prune``), the delivery log's rows older than ``delivery_log_days`` (every row when 0), and
    the change runs finished long ago (``shared.catalog.change_runs_retention``) pruned. Each prune on its own:
    one failing is logged, and neither the others nor the sweep's records are lost to it (the next sweep prunes)."""
    prunes: list[tuple[str, Callable[[], int], dict[str, float]]] = [
        ("member retries", stores.retries.prune, {}),
        (
            "member delivery log",
            lambda: stores.deliveries.prune(delivery_log_days),
            {"retention_days": delivery_log_days},
        ),
        ("change runs", lambda: prune_change_runs(stores.database), {}),
    ]

    def swept() -> list[Outgoing]:
        outgoing = sweep()
        for what, prune, context in prunes:
            try:
                pruned = prune()
            except Exception:  # the next sweep prunes; a sweep's other work must not be lost to it
                log.exception(f"pruning the {what} failed")
            else:
                if pruned:
                    log.info(f"{what} pruned", rows=pruned, **context)
        return outgoing

    return swept
