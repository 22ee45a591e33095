"""Announce a profile's circuit breaker opening and closing: once per change, whatever the replicas.

Each replica's breaker decides for itself (its own window of attempts). When one opens or closes, the replica
moves the profile's shared breaker in the catalog (:meth:`shared.catalog.fleet_store.SqlFleetStore.change_breaker`);
only the replica whose change takes publishes a :class:`shared.events.CircuitBreakerChanged` on the run-events
topic (the notifier mails the failure recipients of the definitions using the profile). A second replica
opening while the first has it open, or closing after the first closed it, says nothing.

The events wait in memory for the consumer loop's periodic task (about a second), which produces them. A
change whose catalog write fails (the catalog away) or whose event is lost in a crash before it is produced
is not announced: the next change is.
"""

from __future__ import annotations

from collections import deque

import structlog

from shared.catalog.fleet_store import SqlFleetStore
from shared.domain.circuit_breaker import BreakerState, Transition
from shared.events import CircuitBreakerChanged
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)

#: How often the consumer loop produces the pending announcements (seconds).
ANNOUNCE_SECONDS = 1.0


class BreakerNotices:
    """Turns this replica's breaker transitions into the fleet's announcements."""

    def __init__(self, store: SqlFleetStore, topic: str) -> None:
        self.store = store
        self.topic = topic
        #: Appended on the dispatcher's event loop, drained on the consumer loop's thread (deque: thread-safe).
        self._pending: deque[Outgoing] = deque()

    def on_change(self, profile: str, transition: Transition) -> None:
        """A breaker of this replica changed: move the shared one; announce the change when this replica made it."""
        if transition.after is BreakerState.HALF_OPEN:
            return  # probing is no news: opening and closing are
        state = "open" if transition.after is BreakerState.OPEN else "closed"
        try:
            change = self.store.change_breaker(profile, state)
        except Exception as exc:  # noqa: BLE001 - the catalog away: this change goes unannounced
            log.warning("circuit breaker change not recorded", profile=profile, state=state, error=str(exc))
            return
        if change is not None:
            event = CircuitBreakerChanged(profile=profile, state=state, episode=change.episode)
            self._pending.append(Outgoing(self.topic, profile, event.to_bytes()))

    def drain(self) -> list[Outgoing]:
        """The announcements to produce now (the consumer loop's periodic task)."""
        drained = []
        while self._pending:
            drained.append(self._pending.popleft())
        return drained
