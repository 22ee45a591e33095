"""Announce a profile's circuit breaker opening and closing for the whole fleet: once per change.

Each replica's breaker decides for itself (its own window of attempts); a transition only updates, in memory,
the set of profiles whose breaker is open (or half-open: batches still held) at this replica
(:meth:`BreakerNotices.on_change`, on the dispatcher's event loop: no catalog access there). Every
``ANNOUNCE_SECONDS``, off the event loop, the replica reports that set to the catalog
(:meth:`shared.catalog.fleet_store.SqlFleetStore.report_breakers`): a profile's breaker is open for the fleet
while any live replica's is, closed once none is (a replica that stops or crashes no longer counts after the
TTL). The changes not announced yet come back from the report; they are published as
:class:`shared.events.CircuitBreakerChanged` on the run-events topic (the notifier mails them) and only then
marked announced: a publication that fails is tried again at the next report, by any replica.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import structlog

from shared.application.ports import FleetBreakers
from shared.domain.circuit_breaker import BreakerState, Transition
from shared.domain.fleet import BreakerChange
from shared.events import CircuitBreakerChanged
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)

#: How often a replica reports its open breakers and publishes the pending announcements (seconds).
ANNOUNCE_SECONDS = 1.0


class BreakerNotices:
    """This replica's open breakers, reported to the fleet; the fleet's changes, announced."""

    def __init__(
        self,
        store: FleetBreakers,
        topic: str,
        replica_id: str,
        *,
        ttl_seconds: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.topic, self.replica_id = store, topic, replica_id
        self.ttl_seconds, self.wall_clock = ttl_seconds, wall_clock
        #: Produces the announcements and waits for their acknowledgement (the consumer loop's ``send_all``).
        self.publish: Callable[[list[Outgoing]], None] | None = None
        self._open: set[str] = set()
        self._lock = threading.Lock()  # changed on the event loop, read on a worker thread
        self._store_lock = threading.Lock()  # a report (worker thread) and leave (main thread) one at a time
        self._left = False

    def on_change(self, profile: str, transition: Transition) -> None:
        """A breaker of this replica changed: remember whether it holds batches (open or half-open)."""
        with self._lock:
            if transition.after is BreakerState.CLOSED:
                self._open.discard(profile)
            else:
                self._open.add(profile)

    def open_profiles(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._open)

    def sweep(self) -> list[BreakerChange]:
        """Report this replica's open breakers; publish the fleet's changes not announced yet and mark them
        announced (not when the publication fails: the next sweep, here or elsewhere, tries again)."""
        with self._store_lock:
            if self._left:
                return []
            pending = self.store.report_breakers(
                self.replica_id, self.open_profiles(), self.wall_clock(), self.ttl_seconds
            )
        if not pending or self.publish is None:
            return []
        events = [
            CircuitBreakerChanged(
                profile=change.profile,
                state="open" if change.state == "open" else "closed",
                episode=change.episode,
                **({"at": change.at} if change.at is not None else {}),
            )
            for change in pending
        ]
        self.publish([Outgoing(self.topic, event.profile, event.to_bytes()) for event in events])
        self.store.mark_announced(pending)
        for change in pending:
            log.warning("circuit breaker announced", profile=change.profile, state=change.state, episode=change.episode)
        return pending

    async def run(self, interval: float = ANNOUNCE_SECONDS) -> None:
        """Sweep every ``interval`` seconds, off the event loop, until cancelled (a failure is logged)."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # noqa: BLE001 - the catalog or Kafka away: the next sweep tries again
                log.warning("circuit breakers not reported", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    def leave(self) -> None:
        """This replica stops: its open breakers no longer count (the others' next sweep may close them)."""
        try:
            with self._store_lock:  # after a report under way, and none after
                self._left = True
                self.store.forget_breakers(self.replica_id)
        except Exception as exc:  # noqa: BLE001 - the catalog away: the rows expire after the TTL instead
            log.warning("open breakers not forgotten", error=f"{type(exc).__name__}: {exc}")
