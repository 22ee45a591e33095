"""One profile's waits do not starve the others (services/dispatcher/request_workers.py, ``aside``): a request waiting
for its profile's ``max_in_flight`` slot, a rate token or a retry's backoff holds none of the dispatcher's
``concurrency`` workers, so another profile's requests in the same round go at their own pace; a request back from
its wait takes the next free turn before the requests not begun; at most ``concurrency`` are handled at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.request_workers import RequestWorkers
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch
from shared.kafka.held_records import HoldRecord
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics
from tests.unit.test_round_admission import Clock

DEADLINE = 5.0  # seconds: a wait for a condition, never a pause


# --- the fairness rule of the workers ---------------------------------------------------------------------------------


def test_a_request_waiting_aside_holds_no_turn_and_is_back_before_the_requests_not_begun():
    workers = RequestWorkers(1)
    events: list[str] = []
    handled = []  # the turns held, as each request sees them

    async def main() -> list[str]:
        back = asyncio.Event()

        async def waits() -> str:
            events.append("A began")
            await workers.aside(back.wait())  # its profile's wait: its turn goes to the next request meanwhile
            handled.append(workers.handled)
            events.append("A back")
            return "A"

        async def other(name: str) -> str:
            events.append(f"{name} began")
            handled.append(workers.handled)
            if name == "B":
                back.set()  # A's wait ends while B holds the only turn: A waits for it, ahead of C
                for _ in range(5):
                    await asyncio.sleep(0)  # turns of the loop, not a timed wait
            events.append(f"{name} ended")
            return name

        return await workers.gather(waits(), other("B"), other("C"))

    assert asyncio.run(main()) == ["A", "B", "C"]
    assert events == ["A began", "B began", "B ended", "A back", "C began", "C ended"]
    assert handled == [1, 1, 1]  # never more than the one turn
    assert workers.busy == 0
    assert workers.handled == 0


def test_a_request_cancelled_while_waiting_aside_leaves_every_turn_free():
    workers = RequestWorkers(2)
    load: list[int] = []
    running = [0]

    async def forever() -> None:
        await workers.aside(asyncio.Event().wait())

    async def failing() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        raise HoldRecord("held", until=1.0)

    async def job() -> None:
        running[0] += 1
        load.append(running[0])
        for _ in range(3):
            await asyncio.sleep(0)
        running[0] -= 1

    async def main() -> None:
        with pytest.raises(HoldRecord):
            await workers.gather(forever(), forever(), failing())  # the failure cancels the two waiting aside
        assert workers.handled == 0
        await workers.gather(*(job() for _ in range(6)))

    asyncio.run(main())
    assert max(load) == 2  # both turns free again after the cancellation
    assert workers.busy == 0
    assert workers.handled == 0


@settings(max_examples=60, deadline=None)
@given(
    concurrency=st.integers(1, 4),
    groups=st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), max_size=8), min_size=1, max_size=4
    ),
)
def test_at_most_concurrency_handled_at_once_waits_aside_not_counted_and_every_result_comes_back(concurrency, groups):
    """Each request: some turns of work, a wait aside of some turns, more work."""
    workers = RequestWorkers(concurrency)
    running = [0]
    most = [0]

    async def work(turns: int) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        for _ in range(turns):
            await asyncio.sleep(0)
        running[0] -= 1

    async def wait(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    async def request(g: int, i: int, before: int, waited: int, after: int) -> tuple[int, int]:
        await work(before)
        await workers.aside(wait(waited))
        await work(after)
        return g, i

    async def main() -> list[list[tuple[int, int]]]:
        rounds = [[request(g, i, *steps) for i, steps in enumerate(group)] for g, group in enumerate(groups)]
        return await asyncio.gather(*(workers.gather(*requests) for requests in rounds))

    results = asyncio.run(main())
    assert results == [[(g, i) for i in range(len(group))] for g, group in enumerate(groups)]
    assert most[0] <= concurrency
    assert workers.busy == 0
    assert workers.handled == 0
    assert workers.queued == 0


# --- the dispatcher: a slow or limited profile and a fast one in one round --------------------------------------------


class Partners:
    """Two partners: ``slow.example`` answers once ``released`` is set (or 503 until then when ``failing``);
    ``fast.example`` at once. Counts the requests in flight, and the fast partner's answers."""

    def __init__(self, failing: bool = False) -> None:
        self.released = asyncio.Event()
        self.failing = failing
        self.fast_answered = 0
        self.fast_done = asyncio.Event()
        self.slow_delivered = 0
        self.in_flight = self.most = 0

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0)
            if "fast.example" in request.url:
                self.fast_answered += 1
                if self.fast_answered == FAST_REQUESTS:
                    self.fast_done.set()
                return PartnerAnswer(200, None, b"")
            if self.failing and not self.released.is_set():
                return PartnerAnswer(503, None, b"")
            await self.released.wait()
            self.slow_delivered += 1
            return PartnerAnswer(200, None, b"")
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


FAST_REQUESTS = 3
CONCURRENCY = 2


class Catalog:
    def __init__(self, slow_limit: dict[str, Any] | None) -> None:
        self.objects: dict[tuple[type[CatalogObject], str], CatalogObject] = {
            (ConnectionProfile, "slow"): ConnectionProfile(
                name="slow", base_url="https://slow.example", rate_limit=slow_limit
            ),
            (ConnectionProfile, "fast"): ConnectionProfile(name="fast", base_url="https://fast.example"),
            (HttpTemplate, "ts"): HttpTemplate(name="ts", query="q", profile="slow", path="/m", batch_size=1),
            (HttpTemplate, "tf"): HttpTemplate(name="tf", query="q", profile="fast", path="/m", batch_size=1),
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


def batch(template: str, index: int, members: int = 1) -> MemberBatch:
    return MemberBatch(
        run_id=uuid.uuid4(),
        definition="d",
        template=template,
        batch_index=index,
        members=[{"id": k} for k in range(members)],
    )


@pytest.mark.parametrize("wait", ["max_in_flight slot", "rate token", "retry backoff"])
def test_a_profiles_waits_do_not_hold_back_another_profiles_requests_in_the_same_round(wait: str):
    partners = Partners(failing=wait == "retry backoff")
    limits: dict[str, dict[str, Any]] = {
        "max_in_flight slot": {"max_in_flight": 1},
        "rate token": {"requests_per_second": 0.001},
    }
    limit = limits.get(wait)
    catalog = Catalog(limit)

    clock = Clock()

    async def held_until_released(seconds: float) -> None:  # the rate's wait and the retries' backoff
        await partners.released.wait()
        clock.now += seconds  # the dispatcher's clock: a rate's token is taken once the wait is over

    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partners, RetryBudget(max_attempts=3, max_seconds=3600), sleep=held_until_released),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=CONCURRENCY,
        sleep=held_until_released,
        clock=clock,
    )
    # The slow profile's batches first: more than the workers, each waiting behind the first (its slot, its rate,
    # or its own retry), then the fast profile's batch of FAST_REQUESTS one-member requests.
    batches = [batch("ts", i) for i in range(2 * CONCURRENCY)] + [batch("tf", 100, FAST_REQUESTS)]

    async def main() -> tuple[bool, int, list[Any]]:
        round_ = asyncio.ensure_future(dispatcher.handle_all(batches))
        try:
            await asyncio.wait_for(partners.fast_done.wait(), DEADLINE)
            fast_went = True
        except TimeoutError:
            fast_went = False
        slow_delivered_meanwhile = partners.slow_delivered
        partners.released.set()  # the slow partner's wait ends: everything is delivered
        return fast_went, slow_delivered_meanwhile, await asyncio.wait_for(round_, DEADLINE)

    fast_went, slow_delivered, results = asyncio.run(main())
    assert fast_went, f"the fast profile's requests waited behind the slow profile's {wait}"
    assert slow_delivered == 0  # the slow profile was still waiting when the fast one was done
    outcomes = [RUN_EVENT_ADAPTER.validate_json(result[-1].value) for result in results]
    assert all(isinstance(o, BatchOutcome) and o.failed == 0 for o in outcomes)
    assert [o.delivered for o in outcomes] == [1] * (2 * CONCURRENCY) + [FAST_REQUESTS]
    assert partners.most <= CONCURRENCY  # the bound on requests in flight holds
    assert dispatcher.workers.busy == 0
    assert dispatcher.workers.handled == 0
