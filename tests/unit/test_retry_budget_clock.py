"""A delivery's retry budget is counted from its first attempt, and no wait (a backoff, a Retry-After) goes past
its end: a request takes at most the budget and one attempt, whatever the partner's timeout or Retry-After (the
dispatcher's poll interval counts on it). The clock is the test's: each attempt and each wait moves it."""

from __future__ import annotations

import asyncio

from services.dispatcher.delivery import Deliverer, RetryBudget
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import NoAnswer, PartnerAnswer
from tests.unit.test_round_admission import Clock

REQUEST = RenderedRequest(method="POST", url="https://partner.example/m", headers={}, content=b"{}")


class Partner:
    """Each attempt takes ``seconds`` of the clock, then answers ``answer`` (None: no answer, a timeout)."""

    def __init__(self, clock: Clock, seconds: float, answer: PartnerAnswer | None) -> None:
        self.clock, self.seconds, self.answer = clock, seconds, answer
        self.sent_at: list[float] = []

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.sent_at.append(self.clock.now)
        self.clock.now += self.seconds
        if self.answer is None:
            raise NoAnswer("TimeoutError: no answer within the profile's timeout")
        return self.answer

    async def aclose(self) -> None:
        return None


def deliver(partner: Partner, clock: Clock, budget: RetryBudget) -> tuple[int, float, list[float]]:
    """The attempts made, the seconds the delivery took, and the waits between them."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    async def request() -> RenderedRequest:
        return REQUEST

    started = clock.now
    deliverer = Deliverer(partner, budget, sleep=sleep)
    deliverer.clock = clock  # the budget's clock (the code before measured it on tenacity's own)
    result = asyncio.run(deliverer.deliver(request, timeout=30.0))
    assert not result.success
    return result.attempts, clock.now - started, waits


def test_a_hanging_partner_takes_the_budget_and_one_timeout_not_two():
    clock = Clock()
    partner = Partner(clock, seconds=30.0, answer=None)  # every attempt waits out a 30 s timeout
    budget = RetryBudget(max_attempts=100, max_seconds=45.0, initial_backoff=1.0, max_backoff=1.0)
    attempts, took, _ = deliver(partner, clock, budget)
    # The first attempt counts in the budget: attempts begin at 0 s and ~31 s (within 45 s), then none. Before, the
    # budget began after the first attempt (on tenacity's own clock): the budget and two timeouts.
    assert attempts == 2
    assert all(at - partner.sent_at[0] < 45.0 for at in partner.sent_at)
    assert took <= 45.0 + 30.0


def test_a_retry_after_longer_than_the_budget_left_waits_what_is_left_only():
    clock = Clock()
    partner = Partner(clock, seconds=20.0, answer=PartnerAnswer(429, "3600", b"slow down"))
    budget = RetryBudget(max_attempts=10, max_seconds=50.0, initial_backoff=0.5, max_backoff=30.0)
    attempts, took, waits = deliver(partner, clock, budget)
    # 20 s spent by the first attempt: the hour asked for is cut to the 30 s left (50 s before: the whole budget).
    assert waits == [30.0]
    assert attempts == 2
    assert took == 20.0 + 30.0 + 20.0  # the budget and one attempt
