"""A connection profile's circuit breaker: its settings and its state machine. Pure (the clock is passed in).

The breaker watches a profile's request attempts. While **closed**, every attempt goes; the outcomes of the
last ``window_seconds`` are kept, and once there are at least ``minimum_requests`` of them and the share of
failures reaches ``failure_rate``, the breaker **opens**: nothing is sent for ``open_seconds``. Then it is
**half-open**: ``half_open_probes`` attempts go (one at a time each, never more at once), the others wait;
a probe that fails opens it again, and once that many probes have succeeded it closes.

A failure is what the retry machinery would retry later (a 5xx, 429, 408 or 425, a timeout, no answer):
a refusal (another 4xx) is an answer from a partner that is up, and counts as a success here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class CircuitBreakerSettings(BaseModel):
    """A profile's ``circuit_breaker``: when its deliveries pause, and how they resume (all fields optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Share of failed attempts (0 to 1) in the window that opens the breaker.
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: Attempts the window must hold before the rate is judged (a few failures of a quiet profile do not open it).
    minimum_requests: Annotated[int, Field(ge=1, le=100_000)] = 20
    #: How far back the window looks, in seconds.
    window_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: How long an open breaker sends nothing before probing, in seconds.
    open_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: Successful probes that close a half-open breaker (also the most probes in flight at once).
    half_open_probes: Annotated[int, Field(ge=1, le=100)] = 3


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: The value of ``member_export_circuit_state`` for each state.
STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class Ticket:
    """An admitted attempt: ``probe`` when it is one of a half-open breaker's probes; ``period`` says which
    closed period admitted it (an outcome from before the last opening is not judged again)."""

    probe: bool
    period: int


@dataclass(frozen=True)
class Transition:
    """A change of state: from ``before`` to ``after`` at ``at``."""

    before: BreakerState
    after: BreakerState
    at: float


@dataclass
class CircuitBreaker:
    """The state machine of one profile's breaker (see the module docstring). Not thread-safe: one event loop."""

    settings: CircuitBreakerSettings
    state: BreakerState = field(init=False, default=BreakerState.CLOSED)
    #: When an open breaker turns half-open.
    open_until: float = field(init=False, default=0.0)
    _outcomes: deque[tuple[float, bool]] = field(init=False, default_factory=deque, repr=False)
    _failures: int = field(init=False, default=0)
    _probes_out: int = field(init=False, default=0)
    _probes_ok: int = field(init=False, default=0)
    _period: int = field(init=False, default=0)
    _changes: list[Transition] = field(init=False, default_factory=list, repr=False)

    def admit(self, now: float) -> Ticket | float:
        """A ticket when an attempt may go now; otherwise when to ask again (``open_until`` while open, ``now``
        while half-open with every probe out: ask again when one comes back)."""
        self._tick(now)
        if self.state is BreakerState.CLOSED:
            return Ticket(probe=False, period=self._period)
        if self.state is BreakerState.OPEN:
            return self.open_until
        if self._probes_out + self._probes_ok < self.settings.half_open_probes:
            self._probes_out += 1
            return Ticket(probe=True, period=self._period)
        return now

    def record(self, now: float, ticket: Ticket, failed: bool) -> None:
        """The outcome of an admitted attempt (``failed``: retryable later; see the module docstring)."""
        self._tick(now)
        if ticket.probe and ticket.period == self._period and self.state is BreakerState.HALF_OPEN:
            self._probes_out -= 1
            if failed:
                self._open(now)
                return
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_probes:
                self._change(BreakerState.CLOSED, now)
                self._period += 1
            return
        if self.state is not BreakerState.CLOSED or ticket.period != self._period:
            return  # admitted before the breaker opened (or closed again): already judged
        self._outcomes.append((now, failed))
        self._failures += failed
        self._forget_before(now - self.settings.window_seconds)
        count = len(self._outcomes)
        if count >= self.settings.minimum_requests and self._failures >= self.settings.failure_rate * count:
            self._open(now)

    def cancel(self, ticket: Ticket) -> None:
        """An admitted attempt that will not be recorded (cancelled): its probe slot is free again."""
        if ticket.probe and ticket.period == self._period and self.state is BreakerState.HALF_OPEN:
            self._probes_out -= 1

    def state_at(self, now: float) -> BreakerState:
        """The state at ``now`` (an open breaker whose time is up is half-open)."""
        self._tick(now)
        return self.state

    def changes(self) -> list[Transition]:
        """The transitions since the last call (oldest first), forgotten once returned."""
        changes, self._changes = self._changes, []
        return changes

    def _tick(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self._change(BreakerState.HALF_OPEN, self.open_until)
            self._probes_out = self._probes_ok = 0

    def _open(self, now: float) -> None:
        self._change(BreakerState.OPEN, now)
        self.open_until = now + self.settings.open_seconds
        self._period += 1
        self._outcomes.clear()
        self._failures = self._probes_out = self._probes_ok = 0

    def _change(self, after: BreakerState, at: float) -> None:
        if after is BreakerState.CLOSED:
            self._outcomes.clear()
            self._failures = 0
        self._changes.append(Transition(self.state, after, at))
        self.state = after

    def _forget_before(self, horizon: float) -> None:
        while self._outcomes and self._outcomes[0][0] < horizon:
            _, failed = self._outcomes.popleft()
            self._failures -= failed
