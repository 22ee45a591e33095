"""The runs store as the notifier uses it (SQLAlchemy implementation in shared/catalog).

The notifier also reads definitions and pauses schedules through the application layer
(:class:`shared.application.ports.DefinitionsStore`), and moves watermarks
(:class:`shared.application.ports.WatermarkStore`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from shared.domain.email_retries import EarlierSends, NotificationMark, RefusedRecipients
from shared.domain.runs import Claimant, RunRecord, RunStatus, StartClaims
from shared.events import AnyRunEvent


class NotifierRuns(Protocol):
    """Run records, folded from events, whether each final run's finish was handled, and the ledger of
    notifications (emails and webhooks)."""

    def catalog_clock(self) -> datetime: ...
    def fold_run_event(
        self, event: AnyRunEvent, starts: StartClaims | None = None
    ) -> tuple[RunRecord | None, RunRecord]: ...
    def fold_run_events(
        self, events: Sequence[AnyRunEvent], starts: StartClaims | None = None
    ) -> dict[uuid.UUID, tuple[RunRecord | None, RunRecord]]: ...
    def get_run(self, run_id: uuid.UUID) -> RunRecord | None: ...
    def unfinished_runs(self, limit: int = 1_000) -> list[RunRecord]: ...
    def recent_final_statuses(self, definition: str, limit: int) -> list[RunStatus]: ...
    def claim_finishes(
        self, run_ids: Sequence[uuid.UUID], claimant: str, lease_seconds: float
    ) -> tuple[set[uuid.UUID], set[uuid.UUID]]: ...
    def renew_finish_claim(self, run_id: uuid.UUID, claimant: str) -> bool: ...
    def finishes_held(self, run_ids: Sequence[uuid.UUID], claimant: str, lease_seconds: float) -> set[uuid.UUID]: ...
    def finishes_pending(self, lease_seconds: float, limit: int) -> tuple[int, list[RunRecord]]: ...
    def mark_finishes_handled(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...
    def unsent_notifications(self, limit: int = 100) -> list[tuple[uuid.UUID, str]]: ...
    def claim_unsent_notifications(
        self,
        keys: Sequence[tuple[uuid.UUID, str]],
        lease_seconds: float,
        claimant: Claimant | None = None,
        earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = None,
    ) -> dict[tuple[uuid.UUID, str], datetime]: ...
    def renew_notification_claims(
        self, claims: Mapping[tuple[uuid.UUID, str], datetime], lease_seconds: float
    ) -> dict[tuple[uuid.UUID, str], datetime]: ...
    def release_notification_claims(self, claims: Mapping[tuple[uuid.UUID, str], datetime]) -> None: ...
    def claim_notification(
        self,
        run_id: uuid.UUID,
        kind: str,
        recipients: list[str],
        lease_seconds: float | None = None,
        claimant: Claimant | None = None,
        earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = None,
    ) -> bool: ...
    def notification_attempts(self, run_id: uuid.UUID, kind: str) -> int: ...
    def refused_recipients(self, run_id: uuid.UUID, kind: str) -> RefusedRecipients: ...
    def notifications(self, run_id: uuid.UUID) -> dict[str, datetime | None]: ...
    def mark_notifications(
        self,
        keys: Sequence[tuple[uuid.UUID, str]],
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
        give_up: bool = False,
        undelivered: str | None = None,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        max_attempts: int | None = None,
        sent_when_spent: str | None = None,
    ) -> dict[tuple[uuid.UUID, str], NotificationMark]: ...
