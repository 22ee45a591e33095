"""Session 51's leftovers of waiting aside, fixed in session 52: a request waiting aside for a rate token or a circuit
breaker's probe holds no rendered body (it is rendered once admitted, and a render that fails then still fails its
members and gives its token and probe back); a request waiting while its profile's limiter is rebuilt (an edited
limit, a new fleet share) takes its token from the limiter now, not the old one; a request held back by the rate
limit is counted once in ``member_export_dispatcher_rate_limit_waits_total``, however many times it waits again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.dispatcher.breakers import ProfileBreakers
from services.dispatcher.delivery import AttemptResult
from services.dispatcher.rate_limit import AdaptiveRateLimiter, LearnedRateLimit, holds_promises_of
from services.dispatcher.round_admission import RoundOver
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, RateLimit
from shared.domain.rendering import PreparedRequest, RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome
from shared.kafka.held_records import HoldRecord
from shared.outbound.partner_http import PartnerAnswer
from tests.dispatcher_helpers import until
from tests.unit.test_profile_fairness import batch
from tests.unit.test_round_admission import Clock
from tests.unit.test_waiting_aside_review import BREAKER, Catalog, SlowQ, delivered, dispatcher_of

DEADLINE = 5.0  # seconds: a wait for a condition, never a pause
#: A template of profile p whose body fails to render for the member of id 0 (10 // 0), and renders for the others.
FAILING = HttpTemplate(name="tf", query="q", profile="p", path="/m", batch_size=1, body='{"v": {{ 10 // member.id }}}')


class Partner:
    """Answers 200 at once; keeps when each request came."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.sent.append(time.monotonic())
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


class Renders:
    """Counts the bodies rendered (``PreparedRequest.render``, the dispatcher's one way to a body)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        render = PreparedRequest.render

        def counted(prepared: PreparedRequest, *args: Any, **kwargs: Any) -> RenderedRequest:
            self.count += 1
            return render(prepared, *args, **kwargs)

        monkeypatch.setattr(PreparedRequest, "render", counted)


class Sleeps:
    """The dispatcher's sleep (its rate waits): a real one, the sleepers counted."""

    def __init__(self) -> None:
        self.now = 0

    async def __call__(self, seconds: float) -> None:
        self.now += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


def outcome_of(result: Any) -> BatchOutcome:
    assert isinstance(result, list), result
    outcome = RUN_EVENT_ADAPTER.validate_json(result[-1].value)
    assert isinstance(outcome, BatchOutcome)
    return outcome


# --- 1. a request waiting aside holds no body -------------------------------------------------------------------------


def test_requests_waiting_aside_for_a_rate_token_hold_no_rendered_body(monkeypatch: pytest.MonkeyPatch):
    """p at 5/s (burst 1), one batch of 5 one-member requests: while 4 wait for their tokens, only the one sent has
    been rendered. Before, all 5 bodies were rendered first and held through the waits (5 renders, 1 sent)."""
    renders = Renders(monkeypatch)
    partner = Partner()
    sleeps = Sleeps()
    dispatcher = dispatcher_of(partner, Catalog(limit={"requests_per_second": 5, "burst": 1}), sleep=sleeps)
    seen: list[tuple[int, int]] = []

    async def main() -> list[Any]:
        round_ = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 0, members=5)]))
        # The first sent (its token at once), the four others waiting aside for theirs (0.2 to 0.8 s).
        await until(lambda: sleeps.now == 4 and len(partner.sent) == 1)
        seen.append((renders.count, len(partner.sent)))
        return await asyncio.wait_for(round_, DEADLINE)

    results = asyncio.run(main())
    assert seen == [(1, 1)]  # bodies rendered, requests sent: none held by a waiting request
    assert delivered(results[0]) == 5
    assert renders.count == 5  # each rendered once


def test_a_request_waiting_for_its_breakers_probe_holds_no_rendered_body(monkeypatch: pytest.MonkeyPatch):
    """A half-open breaker's one probe taken: the request waits aside for it unrendered (before: rendered, held)."""
    renders = Renders(monkeypatch)
    clock = Clock()
    partner = Partner()
    catalog = Catalog(breaker=BREAKER)
    breakers = ProfileBreakers(clock=clock)
    dispatcher = dispatcher_of(partner, catalog, clock=clock, breakers=breakers)
    profile = catalog.objects[(ConnectionProfile, "p")]
    assert isinstance(profile, ConnectionProfile)

    async def main() -> tuple[int, Any]:
        await open_then_half_open(breakers, profile, clock)
        probe = await breakers.admit(profile)  # the only probe: the batch's request waits for it
        round_ = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 0)]))
        await until(lambda: dispatcher.workers.busy == 1 and dispatcher.workers.handled == 0)
        waiting = renders.count
        breakers.record(profile, probe, AttemptResult(status=200, success=True))  # back: closed
        return waiting, await asyncio.wait_for(round_, DEADLINE)

    waiting, results = asyncio.run(main())
    assert waiting == 0
    assert delivered(results[0]) == 1
    assert renders.count == 1


async def open_then_half_open(breakers: ProfileBreakers, profile: ConnectionProfile, clock: Clock) -> None:
    """Three failures open p's breaker (BREAKER: for 3 s); at 4 s it is half-open, one probe at a time."""
    failed = AttemptResult(status=503, success=False)
    for _ in range(2):
        breakers.record(profile, await breakers.admit(profile), failed)
    with pytest.raises(HoldRecord):
        breakers.record(profile, await breakers.admit(profile), failed)
    clock.now = 4.0


def test_a_body_that_fails_to_render_once_admitted_fails_its_members_and_gives_its_token_back():
    """p at 1/s (burst 1): the request of member 0 is admitted (the token taken), its body fails to render; its
    members fail with the reason (no attempt made) and the token is back: the next batch's request goes at once."""
    partner = Partner()
    catalog = Catalog(limit={"requests_per_second": 1, "burst": 1})
    catalog.objects[(HttpTemplate, "tf")] = FAILING
    sleeps = Sleeps()
    dispatcher = dispatcher_of(partner, catalog, sleep=sleeps)
    waited = [False]

    async def recorded(seconds: float) -> None:
        waited[0] = True
        await sleeps(seconds)

    dispatcher.sleep = recorded

    async def main() -> tuple[list[Any], list[Any]]:
        failing = await asyncio.wait_for(dispatcher.handle_all([batch("tf", 0)]), DEADLINE)
        return failing, await asyncio.wait_for(dispatcher.handle_all([batch("tp", 1)]), DEADLINE)

    failing, after = asyncio.run(main())
    outcome = outcome_of(failing[0])
    assert (outcome.delivered, outcome.failed, outcome.status_code) == (0, 1, None)  # no answer: nothing sent
    assert outcome.error is not None
    assert "ZeroDivisionError" in outcome.error
    assert delivered(after[0]) == 1
    assert not waited[0]  # its token was not lost: no wait for the next one
    assert len(partner.sent) == 1


def test_a_body_that_fails_to_render_once_its_breaker_admitted_it_gives_the_probe_back():
    """A half-open breaker's one probe admits the failing request; its render fails: the probe is free again (before
    and after: guarded now that the render comes after the admission)."""
    clock = Clock()
    catalog = Catalog(breaker=BREAKER)
    catalog.objects[(HttpTemplate, "tf")] = FAILING
    breakers = ProfileBreakers(clock=clock)
    dispatcher = dispatcher_of(Partner(), catalog, clock=clock, breakers=breakers)
    profile = catalog.objects[(ConnectionProfile, "p")]
    assert isinstance(profile, ConnectionProfile)

    async def main() -> tuple[list[Any], Any]:
        await open_then_half_open(breakers, profile, clock)
        results = await asyncio.wait_for(dispatcher.handle_all([batch("tf", 0)]), DEADLINE)
        return results, await asyncio.wait_for(breakers.admit(profile), DEADLINE)

    results, probe = asyncio.run(main())
    assert outcome_of(results[0]).failed == 1
    assert probe is not None  # the probe slot was given back: the next attempt is admitted at once


def test_a_body_rendered_on_a_render_thread_past_the_rounds_end_is_not_sent(monkeypatch: pytest.MonkeyPatch):
    """A guard of "no attempt begins after the round's end" now that the body is rendered after the admission: a
    render (on a render thread: the template's first) that ends past the round's end sends nothing, the batch handed
    to the next round."""
    clock = Clock()
    partner = Partner()
    dispatcher = dispatcher_of(partner, Catalog(limit={"requests_per_second": 10, "burst": 1}), clock=clock)
    dispatcher.round_end_seconds = 10.0
    render = PreparedRequest.render

    def slow(prepared: PreparedRequest, *args: Any, **kwargs: Any) -> RenderedRequest:
        clock.now = 20.0  # the render outlasts the round (its end at 10 s)
        return render(prepared, *args, **kwargs)

    monkeypatch.setattr(PreparedRequest, "render", slow)
    results = asyncio.run(asyncio.wait_for(dispatcher.handle_all([batch("tp", 0)]), DEADLINE))
    assert isinstance(results[0], RoundOver)
    assert partner.sent == []


# --- 2. a limiter rebuilt while requests wait for it ------------------------------------------------------------------


def test_requests_waiting_while_their_profiles_rate_is_lowered_go_at_the_new_rate(monkeypatch: pytest.MonkeyPatch):
    """p at 10/s (burst 1), 3 requests: the first goes, two wait (0.1 and 0.2 s). The limit is lowered to 4/s while they
    wait: they go at least 0.25 s apart. Before, they took their tokens from the old limiter: 0.1 s apart, at 10/s."""
    partner = Partner()
    sleeps = Sleeps()
    dispatcher = dispatcher_of(partner, Catalog(limit={"requests_per_second": 10, "burst": 1}), sleep=sleeps)

    async def main() -> list[Any]:
        round_ = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 0, members=3)]))
        await until(lambda: sleeps.now == 2)
        # The edit, as the next request of the edited profile applies it (a new fleet share rebuilds it the same way).
        dispatcher.fleet.limits_of("p", RateLimit(requests_per_second=4, burst=1))
        return await asyncio.wait_for(round_, DEADLINE)

    results = asyncio.run(main())
    assert delivered(results[0]) == 3
    gaps = [later - earlier for earlier, later in zip(partner.sent, partner.sent[1:], strict=False)]
    assert len(gaps) == 2
    assert min(gaps) >= 0.24, gaps  # 4/s (a timer may fire a little early)


def test_a_rebuilt_limiter_holds_the_promises_of_the_one_it_continues_and_a_fresh_one_none():
    limiter = AdaptiveRateLimiter(10.0, 1.0)
    assert limiter.reserve(0.0) == 0.0
    assert limiter.reserve(0.0) == pytest.approx(0.1)  # a promise
    share = limiter.resized(5.0, 1.0)  # a new fleet share
    edited = share.resized(4.0, 1.0)  # then an edited limit
    assert holds_promises_of(edited, limiter)
    assert holds_promises_of(share, limiter)
    assert not holds_promises_of(limiter, edited)  # never backwards
    assert not holds_promises_of(AdaptiveRateLimiter(4.0, 1.0), limiter)  # made afresh (a learned limit configured)
    learned = LearnedRateLimit()
    assert holds_promises_of(learned, learned)
    assert not holds_promises_of(LearnedRateLimit(), learned)


def test_a_refunded_token_is_as_if_never_taken():
    limiter = AdaptiveRateLimiter(1.0, 1.0)
    assert limiter.reserve(0.0) == 0.0
    limiter.refund()
    assert limiter.reserve(0.0) == 0.0  # the token back: the next one goes at once
    assert limiter.reserve(0.0) == pytest.approx(1.0)
    assert limiter.redeem(1.0) == 0.0
    limiter.refund()  # a redeemed token back too, its promise with it
    assert limiter.reserve(1.0) == 0.0


# --- 3. a request waiting again is counted once -----------------------------------------------------------------------


def waits_of(profile: str) -> float:
    value = REGISTRY.get_sample_value("member_export_dispatcher_rate_limit_waits_total", {"profile": profile})
    return value or 0.0


def test_a_request_told_to_wait_again_for_its_token_is_counted_once_in_the_rate_limit_waits():
    """Session 51's spacing case: p at 10/s (burst 1), 2 workers held 0.5 s by q while 4 of p's requests wait; back at
    0.5 s, one goes and the others wait again. Counted: 4 requests held back (before: 8, each wait again counted)."""
    partner = SlowQ(0.5)
    dispatcher = dispatcher_of(partner, Catalog(limit={"requests_per_second": 10, "burst": 1}), concurrency=2)
    before = waits_of("p")

    async def main() -> list[Any]:
        return await asyncio.wait_for(
            dispatcher.handle_all([batch("tq", 0), batch("tp", 1, members=5), batch("tq", 2)]), DEADLINE
        )

    results = asyncio.run(main())
    assert [delivered(result) for result in results] == [1, 5, 1]
    assert len(partner.p_sent) == 5
    assert waits_of("p") - before == 4
