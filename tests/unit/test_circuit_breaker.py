"""The circuit breaker's state machine: when it opens, how long it stays open, how probes close it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import ValidationError

from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.circuit_breaker import BreakerState, CircuitBreaker, CircuitBreakerSettings, Ticket

SETTINGS = CircuitBreakerSettings(
    failure_rate=0.5, minimum_requests=4, window_seconds=10, open_seconds=5, half_open_probes=2
)


def _attempt(breaker: CircuitBreaker, now: float, failed: bool) -> None:
    ticket = breaker.admit(now)
    assert isinstance(ticket, Ticket)
    breaker.record(now, ticket, failed)


def _opened(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(4):
        _attempt(breaker, now, failed=True)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_a_closed_breaker_opens_at_the_failure_rate_once_the_window_holds_enough_attempts():
    breaker = CircuitBreaker(SETTINGS)
    for failed in (True, True, True):
        _attempt(breaker, 0, failed)
    assert breaker.state_at(1) is BreakerState.CLOSED  # 3 failures out of 3, but fewer than minimum_requests
    _attempt(breaker, 1, failed=False)  # 3 of 4 failed: 75 % >= 50 %
    assert breaker.state_at(1) is BreakerState.OPEN
    assert [(t.before, t.after) for t in breaker.changes()] == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_failures_older_than_the_window_are_forgotten():
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(3):
        _attempt(breaker, 0, failed=True)
    for now in (11, 11, 11):  # the three failures at 0 are out of the 10 s window
        _attempt(breaker, now, failed=False)
    _attempt(breaker, 11, failed=True)
    assert breaker.state is BreakerState.CLOSED  # 1 failure of 4 in the window


def test_an_open_breaker_admits_nothing_until_its_time_is_up_then_probes():
    breaker = _opened()
    assert breaker.admit(4.9) == 5.0
    first, second = breaker.admit(5.0), breaker.admit(5.0)
    assert isinstance(first, Ticket)
    assert first.probe
    assert isinstance(second, Ticket)
    assert second.probe
    assert breaker.admit(5.0) == 5.0  # every probe is out: the others wait for one to come back
    assert breaker.state_at(5.0) is BreakerState.HALF_OPEN


def test_successful_probes_close_the_breaker():
    breaker = _opened()
    breaker.changes()
    for _ in range(2):
        ticket = breaker.admit(6)
        assert isinstance(ticket, Ticket)
        breaker.record(6, ticket, failed=False)
    assert breaker.state is BreakerState.CLOSED
    assert [t.after for t in breaker.changes()] == [BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert isinstance(breaker.admit(6), Ticket)


def test_a_failed_probe_opens_the_breaker_again_for_another_open_period():
    breaker = _opened()
    ticket = breaker.admit(6)
    assert isinstance(ticket, Ticket)
    breaker.record(7, ticket, failed=True)
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(7) == 12


def test_a_cancelled_probe_frees_its_slot():
    breaker = _opened()
    tickets = [breaker.admit(5), breaker.admit(5)]
    assert breaker.admit(5) == 5
    breaker.cancel(tickets[0])  # type: ignore[arg-type]
    assert isinstance(breaker.admit(5), Ticket)


def test_outcomes_of_attempts_admitted_before_the_breaker_opened_are_not_judged_again():
    breaker = CircuitBreaker(SETTINGS)
    late = breaker.admit(0)
    assert isinstance(late, Ticket)
    for _ in range(4):
        _attempt(breaker, 0, failed=True)
    for _ in range(2):  # probes close it
        probe = breaker.admit(5)
        assert isinstance(probe, Ticket)
        breaker.record(5, probe, failed=False)
    for _ in range(3):
        _attempt(breaker, 6, failed=False)
    breaker.record(6, late, failed=True)  # from the closed period before: ignored
    _attempt(breaker, 6, failed=True)
    assert breaker.state is BreakerState.CLOSED  # 1 of 4 failed


@given(
    st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()), max_size=200),
)
def test_a_closed_breaker_opens_exactly_when_its_window_says_so(attempts):
    """Model: the breaker opens at the first attempt after which the window's attempts (at least
    ``minimum_requests``) fail at ``failure_rate`` or more; never before."""
    breaker = CircuitBreaker(SETTINGS)
    now, window = 0.0, list[tuple[float, bool]]()
    for gap, failed in attempts:
        now += gap
        ticket = breaker.admit(now)
        assert isinstance(ticket, Ticket)
        breaker.record(now, ticket, failed)
        window = [(t, f) for t, f in [*window, (now, failed)] if t >= now - SETTINGS.window_seconds]
        should_open = len(window) >= 4 and sum(f for _, f in window) >= 0.5 * len(window)
        assert (breaker.state is BreakerState.OPEN) == should_open
        if should_open:
            return


class BreakerMachine(RuleBasedStateMachine):
    """Any interleaving of admissions, outcomes, cancellations and time passing keeps the breaker's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.breaker = CircuitBreaker(SETTINGS)
        self.now = 0.0
        self.out: list[Ticket] = []

    @rule(seconds=st.floats(0, 7, allow_nan=False))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def admit(self) -> None:
        state = self.breaker.state_at(self.now)
        answer = self.breaker.admit(self.now)
        if state is BreakerState.OPEN:
            assert answer == self.breaker.open_until > self.now  # nothing goes while open
        if isinstance(answer, Ticket):
            assert answer.probe == (state is BreakerState.HALF_OPEN)
            self.out.append(answer)

    @precondition(lambda self: self.out)
    @rule(index=st.integers(0, 1000), failed=st.booleans())
    def outcome(self, index: int, failed: bool) -> None:
        ticket = self.out.pop(index % len(self.out))
        was = self.breaker.state_at(self.now)
        self.breaker.record(self.now, ticket, failed)
        after = self.breaker.state
        if was is BreakerState.HALF_OPEN and ticket.probe and failed and after is not was:
            assert after is BreakerState.OPEN  # a failed probe reopens, never closes
        if after is BreakerState.CLOSED and was is not BreakerState.CLOSED:
            assert not failed  # only a successful probe closes

    @precondition(lambda self: self.out)
    @rule(index=st.integers(0, 1000))
    def cancel(self, index: int) -> None:
        self.breaker.cancel(self.out.pop(index % len(self.out)))

    @invariant()
    def probes_in_flight_are_bounded(self) -> None:
        if self.breaker.state is BreakerState.HALF_OPEN:
            current = [t for t in self.out if t.probe and t.period == self.breaker._period]
            assert len(current) <= SETTINGS.half_open_probes

    @invariant()
    def transitions_chain(self) -> None:
        for change in self.breaker.changes():
            assert change.before is not change.after
            assert (change.before, change.after) in {
                (BreakerState.CLOSED, BreakerState.OPEN),
                (BreakerState.OPEN, BreakerState.HALF_OPEN),
                (BreakerState.HALF_OPEN, BreakerState.OPEN),
                (BreakerState.HALF_OPEN, BreakerState.CLOSED),
            }


TestBreakerMachine = BreakerMachine.TestCase


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"minimum_requests": 0}, "minimum_requests"),
        ({"window_seconds": -1}, "window_seconds"),
        ({"open_seconds": 0}, "open_seconds"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"probes": 3}, "probes"),
    ],
)
def test_a_profiles_circuit_breaker_is_validated_naming_the_field(setting, field):
    with pytest.raises(ValidationError) as raised:
        ConnectionProfile(name="p", base_url="https://partner.example.com", circuit_breaker=setting)
    assert [".".join(map(str, e["loc"])) for e in raised.value.errors()] == [f"circuit_breaker.{field}"]


def test_an_empty_circuit_breaker_setting_takes_the_defaults():
    profile = ConnectionProfile(name="p", base_url="https://partner.example.com", circuit_breaker={})
    assert profile.circuit_breaker == CircuitBreakerSettings()
    assert ConnectionProfile(name="p", base_url="https://partner.example.com").circuit_breaker is None
