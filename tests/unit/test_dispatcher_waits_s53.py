"""Session 53's dispatcher waits: the heartbeat's bound covers every attempt still out when a profile's timeout is
edited under overlapping batches; a retry waiting for its rate token holds no rendered body; a slot waiter told to
look again (its profile's share dropped to 0 and back) keeps its place in the queue."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.fleet_limits import FleetLimits, Slots
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import PreparedRequest, RenderedRequest
from shared.kafka.held_records import HoldRecord
from shared.outbound.partner_http import PartnerAnswer
from tests.dispatcher_helpers import until
from tests.unit.test_limit_shares import _Catalog as Heartbeats
from tests.unit.test_profile_fairness import batch
from tests.unit.test_waiting_aside_bodies import outcome_of
from tests.unit.test_waiting_aside_review import Catalog, delivered, dispatcher_of

DEADLINE = 5.0  # seconds: a wait for a condition, never a pause
TTL = 10.0

# --- 1. the heartbeat's bound covers the attempts of batches read before an edit of the profile's timeout -------------


def profile_p(timeout: float) -> ConnectionProfile:
    return ConnectionProfile(
        name="p", base_url="https://p.example", rate_limit={"max_in_flight": 4}, timeout_seconds=timeout
    )


class TimeoutPartner:
    """A request sent with a 60 s timeout stays out until ``release``; a two-member request is refused (400, so that
    its batch sends each member again) once ``refuse`` is set; the others are answered at once."""

    def __init__(self) -> None:
        self.long_in = asyncio.Event()
        self.release = asyncio.Event()
        self.pair_in = asyncio.Event()
        self.refuse = asyncio.Event()

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        if timeout == 60:
            self.long_in.set()
            await self.release.wait()
        elif request.content.count(b'"id"') == 2:
            self.pair_in.set()
            await self.refuse.wait()
            return PartnerAnswer(400, None, b"one member is refused")
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


def timeout_case(first: float) -> tuple[Catalog, TimeoutPartner, FleetLimits, Heartbeats, Dispatcher]:
    catalog = Catalog()
    catalog.objects[(ConnectionProfile, "p")] = profile_p(first)
    catalog.objects[(HttpTemplate, "tp2")] = HttpTemplate(name="tp2", query="q", profile="p", path="/m", batch_size=2)
    partner = TimeoutPartner()
    heartbeats = Heartbeats()
    fleet = FleetLimits(heartbeats, replica_id="a", ttl_seconds=TTL, wall_clock=lambda: 1000.0)
    dispatcher = dispatcher_of(partner, catalog, concurrency=4, fleet=fleet)
    dispatcher.objects = CatalogCache(catalog, catalog, ttl=0)  # type: ignore[arg-type]  # each batch reads p again
    return catalog, partner, fleet, heartbeats, dispatcher


def test_a_lowered_timeout_keeps_the_heartbeats_bound_while_an_attempt_read_before_it_is_out():
    """p's timeout 60 s lowered to 5 s while batch A's attempt (read before, 60 s) is out; batch B (read after, 5 s)
    is sent and answered. The heartbeat still asks the others to count this replica for TTL + 60 s while A's attempt
    is out, and TTL + 5 s once it is back. Before: TTL + 5 s as soon as B's request was made, so the others could
    take this replica's share 55 s before A's attempt timed out (more requests in flight than max_in_flight)."""
    catalog, partner, fleet, heartbeats, dispatcher = timeout_case(60)

    async def main() -> tuple[float, float, list[Any]]:
        await fleet.beat()
        first = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 0)]))
        await asyncio.wait_for(partner.long_in.wait(), DEADLINE)
        catalog.objects[(ConnectionProfile, "p")] = profile_p(5)
        second = await asyncio.wait_for(dispatcher.handle_all([batch("tp", 1)]), DEADLINE)
        await fleet.beat()
        while_out = heartbeats.ttls[-1]
        partner.release.set()
        results = [*await asyncio.wait_for(first, DEADLINE), *second]
        gc.collect()
        await fleet.beat()
        return while_out, heartbeats.ttls[-1], results

    while_out, after, results = asyncio.run(main())
    assert [delivered(result) for result in results] == [1, 1]
    assert while_out == TTL + 60
    assert after == TTL + 5


def test_a_raised_timeout_keeps_the_heartbeats_bound_when_a_batch_read_before_it_sends_after_it():
    """p's timeout 5 s raised to 60 s: batch B (read after) has a 60 s attempt out when batch A (read before, 5 s)
    sends its next requests (its pair refused, each member sent again). The heartbeat asks for TTL + 60 s. Before:
    TTL + 5 s, A's requests being the last to look the profile's limits up."""
    catalog, partner, fleet, heartbeats, dispatcher = timeout_case(5)

    async def main() -> tuple[float, list[Any]]:
        await fleet.beat()
        first = asyncio.ensure_future(dispatcher.handle_all([batch("tp2", 0, members=2)]))
        await asyncio.wait_for(partner.pair_in.wait(), DEADLINE)
        catalog.objects[(ConnectionProfile, "p")] = profile_p(60)
        second = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 1)]))
        await asyncio.wait_for(partner.long_in.wait(), DEADLINE)
        partner.refuse.set()
        results = await asyncio.wait_for(first, DEADLINE)
        await fleet.beat()
        bound = heartbeats.ttls[-1]
        partner.release.set()
        return bound, [*results, *await asyncio.wait_for(second, DEADLINE)]

    bound, results = asyncio.run(main())
    assert [delivered(result) for result in results] == [2, 1]
    assert bound == TTL + 60


# --- 2. a retry waiting for its rate token holds no body --------------------------------------------------------------

RETRIES = 8
#: One member's value: a body of about 100 KB.
BIG = "x" * 100_000


class FailsFirst:
    """Answers 503 to each request's first attempt (while ``failing``) and 200 to the others; keeps each attempt's body
    by its key."""

    def __init__(self) -> None:
        self.failing = True
        self.bodies: dict[str, list[bytes]] = {}

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        sent = self.bodies.setdefault(request.headers["Idempotency-Key"], [])
        sent.append(request.content)
        return PartnerAnswer(503 if self.failing and len(sent) == 1 else 200, None, b"")

    async def aclose(self) -> None:
        return None


class Rendered:
    """The bodies rendered (``PreparedRequest.render``), as weak references: which are still held. The render of
    index ``fail`` (from 0) fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> None:
        self.refs: list[weakref.ref[RenderedRequest]] = []
        calls = [0]
        render = PreparedRequest.render

        def kept(prepared: PreparedRequest, *args: Any, **kwargs: Any) -> RenderedRequest:
            calls[0] += 1
            if calls[0] - 1 == fail:
                raise ZeroDivisionError("the render failed this time")
            rendered = render(prepared, *args, **kwargs)
            self.refs.append(weakref.ref(rendered))
            return rendered

        monkeypatch.setattr(PreparedRequest, "render", kept)

    def held_bytes(self) -> int:
        gc.collect()
        return sum(len(rendered.content) for ref in self.refs if (rendered := ref()) is not None)


class Gate:
    """The dispatcher's sleep (its rate waits): held at a gate until ``open`` is set, then a real sleep."""

    def __init__(self) -> None:
        self.waiting = self.calls = 0
        self.open = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waiting += 1
        self.calls += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        await asyncio.sleep(seconds)


def big_batch(index: int, members: int) -> Any:
    found = batch("tp", index, members=members)
    return found.model_copy(update={"members": [{"id": k, "v": BIG} for k in range(members)]})


def retry_case(
    monkeypatch: pytest.MonkeyPatch, limit: dict[str, Any], fail: int | None = None
) -> tuple[FailsFirst, Rendered, Gate, Dispatcher]:
    partner = FailsFirst()
    rendered = Rendered(monkeypatch, fail)
    gate = Gate()
    catalog = Catalog(limit=limit)
    dispatcher = dispatcher_of(partner, catalog, sleep=gate)
    dispatcher.deliverer = Deliverer(partner, RetryBudget(max_attempts=2, initial_backoff=0.001))
    return partner, rendered, gate, dispatcher


def test_retries_waiting_for_their_rate_tokens_hold_no_rendered_body(monkeypatch: pytest.MonkeyPatch):
    """8 requests of about 100 KB at 50/s (burst 8): the first attempts go at once and are answered 503; their 8
    retries wait for their tokens. While they wait, no body is held (before: the 8 bodies, 800 KB); each retry is
    rendered again once admitted and sends the same body as its first attempt."""
    partner, rendered, gate, dispatcher = retry_case(monkeypatch, {"requests_per_second": 50, "burst": RETRIES})

    async def main() -> tuple[int, list[Any]]:
        round_ = asyncio.ensure_future(dispatcher.handle_all([big_batch(0, RETRIES)]))
        await until(lambda: gate.waiting == RETRIES)
        held = rendered.held_bytes()
        gate.open.set()
        return held, await asyncio.wait_for(round_, DEADLINE)

    held, results = asyncio.run(main())
    assert held == 0
    assert delivered(results[0]) == RETRIES
    assert len(rendered.refs) == 2 * RETRIES  # each body rendered for its first attempt and again for its retry
    assert all(len(sent) == 2 and sent[0] == sent[1] for sent in partner.bodies.values())


def test_a_retry_whose_body_fails_to_render_again_fails_its_members_and_gives_its_token_back(
    monkeypatch: pytest.MonkeyPatch,
):
    """p at 4/s (burst 1): a request answered 503, its retry waits for its token and is admitted, and its body fails
    to render then (as a first attempt's may: its CPU deadline). Its member fails with the render's reason and the
    token is back: the next batch's request goes without waiting for one."""
    partner, _, gate, dispatcher = retry_case(monkeypatch, {"requests_per_second": 4, "burst": 1}, fail=1)

    async def main() -> tuple[list[Any], list[Any], int]:
        gate.open.set()
        failing = await asyncio.wait_for(dispatcher.handle_all([big_batch(0, 1)]), DEADLINE)
        partner.failing = False
        waited = gate.calls
        after = await asyncio.wait_for(dispatcher.handle_all([big_batch(1, 1)]), DEADLINE)
        return failing, after, gate.calls - waited

    failing, after, waits = asyncio.run(main())
    outcome = outcome_of(failing[0])
    assert (outcome.delivered, outcome.failed) == (0, 1)
    assert outcome.error is not None
    assert "the render failed this time" in outcome.error
    assert outcome_of(after[0]).delivered == 1
    assert waits == 0  # the failed retry's token was given back


# --- 3. a slot waiter told to look again keeps its place ------------------------------------------------------------


def held() -> HoldRecord:
    return HoldRecord("held", 0.0)


@pytest.mark.parametrize("capacity_back", [1, 2])
def test_a_slot_waiter_woken_to_look_again_keeps_its_place_ahead_of_a_later_request(capacity_back: int):
    """max_in_flight 1, one request in flight, A waiting. The share drops to 0 (A is woken to look again: held back if
    it is still 0 when it looks) and is back (1, or 2: a slot free) before A looks; then B asks, and the request in
    flight ends. A takes a slot first. Before, A went to the end of the queue (behind B, or B took the free slot)."""
    order: list[str] = []

    async def main() -> None:
        slots = Slots(1)
        await slots.take(held)  # the request in flight

        async def request(name: str) -> None:
            await slots.take(held)
            order.append(name)
            slots.give()

        async def in_flight_ends() -> None:
            slots.give()

        first = asyncio.ensure_future(request("A"))
        await until(lambda: bool(slots._waiters))
        slots.resize(0)
        slots.resize(capacity_back)
        ends = asyncio.ensure_future(in_flight_ends())
        await request("B")  # asks at once, here, before A's look (its wake-up is a task switch away)
        await asyncio.wait_for(asyncio.gather(first, ends), DEADLINE)
        assert slots.in_use == 0

    asyncio.run(main())
    assert order == ["A", "B"]
