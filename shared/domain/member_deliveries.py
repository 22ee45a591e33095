"""A member's last delivery, as the member delivery log answers it. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: The longest member key looked up (keys are the saved query's key values, as text).
MAX_KEY_LENGTH = 500


@dataclass(frozen=True)
class MemberDelivery:
    """A member's last delivery: delivered, or failed with the partner's last status and reason."""

    definition: str
    key: str
    delivered: bool
    run_id: str
    batch_index: int
    at: datetime
    #: HTTP attempts of the member's request (the batch's when delivered, the refused slice's when failed).
    attempts: int
    status: int | None
    reason: str | None
    #: Sent again because an earlier run's delivery of it failed.
    retry: bool

    @property
    def outcome(self) -> str:
        """``delivered`` or ``failed``."""
        return "delivered" if self.delivered else "failed"
