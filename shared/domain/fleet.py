"""What the dispatcher replicas share through the catalog: heartbeats and the changes of the fleet's breakers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ReplicaBeat:
    """A live replica: its id and the view (shares) it has drained to."""

    replica_id: str
    drained_view: str | None


@dataclass(frozen=True)
class BreakerChange:
    """A change of a profile's shared breaker to announce: ``state`` (open or closed) in its ``episode``."""

    profile: str
    state: str
    episode: int
    at: datetime | None = None

    @property
    def ordinal(self) -> int:
        """Its place among the profile's changes: an episode's opening, then its closing."""
        return 2 * self.episode + (1 if self.state == "closed" else 0)
