"""The dispatcher's circuit breakers, one per connection profile that has a ``circuit_breaker`` setting.

Every attempt of a request to such a profile is admitted first (:meth:`ProfileBreakers.admit`) and its outcome
recorded after (:meth:`ProfileBreakers.record`). While the breaker is open, the batch is held back
(:class:`shared.kafka.held_records.HoldRecord`): the consumer loop keeps it uncommitted and hands it back
once the breaker turns half-open; no attempt is spent, nothing is dead-lettered, and the batch's retry
budget starts afresh when it is delivered again. A request whose attempt fails as the breaker opens is held
back the same way instead of waiting out its retries. While half-open, the attempts beyond the probes wait
(on the event loop, for a probe to come back) instead of being held.

Each transition is counted (``member_export_circuit_transitions_total``), shown
(``member_export_circuit_state``) and handed to ``on_change`` (the breaker notices).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from services.dispatcher.delivery import AttemptResult
from services.dispatcher.fleet_limits import read_stamp
from services.dispatcher.metrics import CIRCUIT_STATE, CIRCUIT_TRANSITIONS
from services.dispatcher.wakeup import Wakeup
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.circuit_breaker import (
    STATE_VALUES,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerSettings,
    Ticket,
    Transition,
)
from shared.kafka.held_records import HoldRecord

log = structlog.get_logger(__name__)

#: Longest wait for a probe to come back before asking the breaker again (seconds).
PROBE_WAIT_SECONDS = 1.0
#: Longest wait of an attempt for the probes of a half-open breaker, after which its batch is held back.
MAX_PROBE_WAIT_SECONDS = 60.0


@dataclass
class _Entry:
    settings: CircuitBreakerSettings
    breaker: CircuitBreaker
    #: Set (and replaced) whenever an outcome is recorded: what waiting attempts wake up on.
    changed: Wakeup = field(default_factory=Wakeup)


@dataclass(frozen=True)
class Admission:
    """An attempt admitted by a breaker: its outcome is recorded against that very breaker (the profile's
    breaker may have been rebuilt meanwhile, its settings edited: the old one's probes still come back)."""

    ticket: Ticket
    entry: _Entry


def held(profile: str, until: float) -> HoldRecord:
    """The hold of a batch whose profile's breaker is open until ``until``."""
    return HoldRecord(f"the circuit breaker of connection profile {profile!r} is open: the batch waits", until)


class ProfileBreakers:
    """The breakers of the profiles this dispatcher delivers to (kept across batches; rebuilt when edited)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, Transition], None] | None = None,
        max_wait_seconds: float = MAX_PROBE_WAIT_SECONDS,
    ) -> None:
        self.clock = clock
        self.on_change = on_change
        #: Longest wait of an attempt for a half-open breaker's probes to come back (seconds).
        self.max_wait_seconds = max_wait_seconds
        self._entries: dict[str, _Entry] = {}
        #: When the settings each profile's breaker follows were read (:func:`read_stamp`).
        self._reads: dict[str, int] = {}

    def _entry(self, profile: ConnectionProfile, read: int | None = None) -> _Entry | None:
        """The profile's breaker. ``read``: when ``profile`` was read (:func:`read_stamp`; None: now). The newest
        settings read win: a batch holding a profile read before the settings the breaker follows (read before an
        edit, overlapping batches read after it) gets the current breaker, which is not rebuilt back to the
        edited-away settings (each rebuild starts closed: an open breaker would be lost at every flip)."""
        read = read_stamp() if read is None else read
        if read < self._reads.get(profile.name, -1):
            return self._entries.get(profile.name)
        self._reads[profile.name] = read
        settings = profile.circuit_breaker
        if settings is None:
            dropped = self._entries.pop(profile.name, None)
            if dropped is not None:
                CIRCUIT_STATE.remove(profile.name)
                self._retire(profile.name, dropped)
            return None
        entry = self._entries.get(profile.name)
        # The catalog cache hands the same object until it expires: identity first, equality only then.
        if entry is None or (entry.settings is not settings and entry.settings != settings):
            if entry is not None:
                self._retire(profile.name, entry)
            entry = self._entries[profile.name] = _Entry(settings, CircuitBreaker(settings))
            CIRCUIT_STATE.labels(profile=profile.name).set(STATE_VALUES[BreakerState.CLOSED])
            for state in BreakerState:  # every series from 0: increase() sees the first opening
                CIRCUIT_TRANSITIONS.labels(profile=profile.name, state=state.value)
        return entry

    def knows(self, name: str) -> bool:
        """Whether a breaker is kept for profile ``name`` (one without ``circuit_breaker`` whose name is not known
        here needs no :meth:`admit`: it would answer None)."""
        return name in self._entries

    def check(self, profile: ConnectionProfile, read: int | None = None) -> None:
        """Raise the batch's hold when the profile's breaker is open (before rendering anything); ``read``: when
        ``profile`` was read (see :meth:`_entry`)."""
        entry = self._entry(profile, read)
        if entry is None:
            return
        now = self.clock()
        state = entry.breaker.state_at(now)
        self._publish(profile.name, entry)
        if state is BreakerState.OPEN:
            raise held(profile.name, entry.breaker.open_until)

    async def admit(
        self,
        profile: ConnectionProfile,
        aside: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
        read: int | None = None,
    ) -> Admission | None:
        """An admission for one attempt (None for a profile without a breaker); waits while the probes are out,
        ``max_wait_seconds`` at most (then the batch is held back); raises the batch's hold while the breaker is
        open. The breaker is looked up again after each wait: its settings may have been edited or removed.
        ``aside`` awaits each wait (the dispatcher's: the request holds no worker while it waits); ``read``: when
        ``profile`` was read (see :meth:`_entry`)."""
        deadline = self.clock() + self.max_wait_seconds
        entry = self._entry(profile, read)
        while True:
            if entry is None:
                return None
            now = self.clock()
            answer = entry.breaker.admit(now)
            self._publish(profile.name, entry)
            if isinstance(answer, Ticket):
                return Admission(answer, entry)
            if answer > now:
                raise held(profile.name, answer)
            if now >= deadline:  # the probes do not come back: the batch waits its turn in the consumer loop
                raise held(profile.name, now + PROBE_WAIT_SECONDS)
            # Half-open, every probe out: wait for one to come back.
            changed = entry.changed.wait(PROBE_WAIT_SECONDS)
            await (changed if aside is None else aside(changed))
            # The profile's breaker now (by name: this batch's profile may be older than the one that rebuilt it).
            entry = self._entries.get(profile.name)

    def record(self, profile: ConnectionProfile, admission: Admission | None, attempt: AttemptResult) -> None:
        """Judge an attempt's outcome; raise the batch's hold when it failed and the breaker is (now) open."""
        if admission is None:
            return
        entry = admission.entry
        failed = attempt.retryable
        entry.breaker.record(self.clock(), admission.ticket, failed)
        if self._entries.get(profile.name) is not entry:
            entry.breaker.changes()  # a retired breaker's news is no one's: the profile's breaker is another now
            return
        self._publish(profile.name, entry)
        self._wake(entry)
        if failed and entry.breaker.state is BreakerState.OPEN:
            raise held(profile.name, entry.breaker.open_until)

    def cancel(self, profile: ConnectionProfile, admission: Admission | None) -> None:
        """An admitted attempt that was not made (the batch held or abandoned): its probe slot is free again."""
        if admission is not None:
            admission.entry.breaker.cancel(admission.ticket)
            self._wake(admission.entry)

    def _retire(self, profile: str, entry: _Entry) -> None:
        """A breaker replaced (settings edited) or removed: its waiters look again; if it held batches back,
        it no longer does (told as a closing, without counting it as one)."""
        self._wake(entry)
        state = entry.breaker.state
        if state is not BreakerState.CLOSED and self.on_change is not None:
            self.on_change(profile, Transition(state, BreakerState.CLOSED, self.clock()))

    @staticmethod
    def _wake(entry: _Entry) -> None:
        entry.changed.notify()

    def _publish(self, profile: str, entry: _Entry) -> None:
        for change in entry.breaker.changes():
            CIRCUIT_STATE.labels(profile=profile).set(STATE_VALUES[change.after])
            CIRCUIT_TRANSITIONS.labels(profile=profile, state=change.after.value).inc()
            log.warning("circuit breaker", profile=profile, state=change.after.value, was=change.before.value)
            if self.on_change is not None:
                self.on_change(profile, change)
