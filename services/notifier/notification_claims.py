"""A sweep's claims of the unsent notifications it is about to try: one replica's sweep sends each, once.

Claimed at once in the ledger (:meth:`NotifierRuns.claim_unsent_notifications`, a lease on the catalog's clock),
renewed on the way when the sweep has spent a quarter of the lease on earlier sends (a slow SMTP server or webhook
receiver), so that a live sweep's claims are not taken over; those it did not get to are released at its end, due
again at once. A sweep that dies leaves its claims to lapse: another sweep takes them after the lease. The circuit
breaker emails' sweep claims its outbox's the same way (any ledger of the same three calls).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

#: A notification's key in a ledger (the runs' (run id, kind); the breaker emails' outbox's (profile, ordinal,
#: definition)).
K = TypeVar("K", bound=tuple[Any, ...])


class ClaimsLedger(Protocol[K]):
    """Where a sweep's claims are taken, renewed and released (:class:`services.notifier.ports.NotifierRuns`)."""

    def claim_unsent_notifications(self, keys: Sequence[K], lease_seconds: float) -> dict[K, datetime]: ...
    def renew_notification_claims(self, claims: Mapping[K, datetime], lease_seconds: float) -> dict[K, datetime]: ...
    def release_notification_claims(self, claims: Mapping[K, datetime]) -> None: ...


class SweepClaims(Generic[K]):
    """The notifications one sweep claimed and has not tried yet."""

    def __init__(
        self,
        runs: ClaimsLedger[K],
        keys: Iterable[K],
        lease_seconds: float,
        claimed: Mapping[K, datetime] | None = None,
    ) -> None:
        """Claim ``keys`` for ``lease_seconds``; or take ``claimed``, the claims the caller made of them itself (its
        ledger's claim reading more with them, e.g. the recipients refused so far)."""
        self.runs, self.lease_seconds = runs, lease_seconds
        if claimed is None:
            claimed = runs.claim_unsent_notifications(sorted(set(keys)), lease_seconds)
        self._claims: dict[K, datetime] = dict(claimed)
        self._taken: dict[K, datetime] = {}
        self._renewed_at = time.monotonic()

    def __contains__(self, key: K) -> bool:
        return key in self._claims

    def take(self, keys: Iterable[K]) -> list[K]:
        """Of ``keys``, those still this sweep's, to try now (no longer released at the end). Renews every claim
        not tried yet first, once a quarter of the lease went by since the last renewal: a claim that lapsed
        meanwhile and was taken by another sweep is left to it."""
        if time.monotonic() - self._renewed_at >= self.lease_seconds / 4:
            renewed = self.runs.renew_notification_claims(self._claims, self.lease_seconds)
            self._renewed_at = time.monotonic()
            if len(renewed) < len(self._claims):
                log.warning(
                    "notifications claimed by this sweep taken over by another: leaving them to it",
                    notifications=len(self._claims) - len(renewed),
                )
            self._claims = renewed
        taken = [key for key in keys if key in self._claims]
        for key in taken:
            self._taken[key] = self._claims.pop(key)
        return taken

    def give_back(self, keys: Iterable[K]) -> None:
        """Of the claims taken, those not tried after all (the round's budget spent on the way): released at the end
        with the rest, due again at once."""
        for key in keys:
            if key in self._taken:
                self._claims[key] = self._taken.pop(key)

    def release_rest(self) -> None:
        """Release the claims not tried (the sweep stopped before them): due again at once. A failure is logged:
        they lapse after the lease instead."""
        rest, self._claims = self._claims, {}
        if not rest:
            return
        try:
            self.runs.release_notification_claims(rest)
        except Exception:  # in a finally: the sweep's own failure, if any, is the one to raise
            log.warning("releasing unsent notifications' claims failed; they lapse after the lease", exc_info=True)
