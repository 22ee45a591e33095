"""A dispatcher round's end (``round_end_seconds``): past it no attempt begins, whether a request waits for a
profile's ``max_in_flight`` slot, for its rate, or to retry; the batches of the requests not sent are handed to the
next round uncommitted (no outcome, nothing dead-lettered), so a round ends within the poll interval whatever its
partners do. An in-memory partner; the clock is the test's, each request moving it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import REGISTRY

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.round_admission import RoundOver
from services.dispatcher.settings import DispatcherSettings
from shared.domain.catalog_objects import PROFILE_TIMEOUT_MAX_SECONDS, ConnectionProfile
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics
from tests.unit.test_round_admission import Catalog, Clock, Partner, batches

SECONDS_A_REQUEST = 5.0


class Answering(Partner):
    """Each request takes ``SECONDS_A_REQUEST`` of the clock, then is answered ``status``."""

    def __init__(self, clock: Clock, status: int = 200) -> None:
        super().__init__(self.late)
        self.clock, self.status = clock, status

    def late(self) -> None:
        self.clock.now += SECONDS_A_REQUEST

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        await super().send(request, timeout, network)
        return PartnerAnswer(self.status, None, b"")


def dispatcher_of(
    partner: Partner, clock: Clock, rate_limit: dict[str, Any] | None, round_end: float, **options: Any
) -> Dispatcher:
    catalog = Catalog(batch_size=500)
    catalog.objects[(ConnectionProfile, "p")] = ConnectionProfile(
        name="p", base_url="https://partner.example", rate_limit=rate_limit
    )
    budget = options.pop("budget", RetryBudget(max_attempts=1))
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, budget),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        round_seconds=60.0,  # every batch begins at once: the round's end alone stops them
        clock=clock,
        **options,
    )
    dispatcher.round_end_seconds = round_end
    return dispatcher


def handed_back_total() -> float:
    return REGISTRY.get_sample_value("member_export_dispatcher_round_handed_back_batches_total") or 0.0


def delivered(result: Any) -> bool:
    if not isinstance(result, list):
        return False
    outcome = RUN_EVENT_ADAPTER.validate_json(result[-1].value)
    return isinstance(outcome, BatchOutcome) and outcome.delivered == 1 and len(result) == 1


def test_requests_waiting_for_a_max_in_flight_slot_at_the_rounds_end_are_not_sent_and_handed_back():
    clock = Clock()
    partner = Answering(clock)
    dispatcher = dispatcher_of(partner, clock, {"max_in_flight": 1}, 12.0)
    sent = batches(6)
    before = handed_back_total()
    results = asyncio.run(dispatcher.handle_all(sent))
    # One at a time, 5 s each: sent at 0, 5 and 10 s; at 15 s the round's end (12 s) has passed. Before, the round
    # sent all six, one after the other (30 s), whatever the poll interval.
    assert [delivered(result) for result in results] == [True] * 3 + [False] * 3
    assert all(isinstance(result, RoundOver) and 0 < result.until <= time.monotonic() for result in results[3:])
    assert sorted(partner.keys) == sorted(batch.identity for batch in sent[:3])  # nothing of the others sent
    assert handed_back_total() - before == 3


def test_a_retry_that_would_begin_after_the_rounds_end_is_not_made_and_its_batch_handed_back():
    clock = Clock()
    partner = Answering(clock, status=503)
    budget = RetryBudget(max_attempts=10, max_seconds=1000.0, initial_backoff=0.001, max_backoff=0.001)
    dispatcher = dispatcher_of(partner, clock, None, 7.0, budget=budget)
    results = asyncio.run(dispatcher.handle_all(batches(1)))
    # Attempts at 0 and 5 s; the third would begin at 10 s, past the end: not dead-lettered, handed back (before:
    # ten attempts, 50 s, and the members dead-lettered).
    assert isinstance(results[0], RoundOver)
    assert len(partner.keys) == 2


def test_a_rate_wait_past_the_rounds_end_is_not_waited_and_its_token_given_back():
    clock = Clock()
    partner = Answering(clock)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    limit = {"requests_per_second": 0.1, "burst": 1}  # one request every 10 s
    dispatcher = dispatcher_of(partner, clock, limit, 8.0, sleep=sleep)
    results = asyncio.run(dispatcher.handle_all(batches(3)))
    # The first admitted goes at once (its burst), 5 s; the next two would wait until 10 s and 20 s, past the end
    # (8 s): handed back, unwaited.
    assert sorted(delivered(result) for result in results) == [False, False, True]
    assert sum(isinstance(result, RoundOver) for result in results) == 2
    assert waits == []  # before: 5 s and 15 s waited, the round four times as long
    assert len(partner.keys) == 1
    # The tokens of the requests not sent are given back: the next round's first request waits what one sent asks.
    clock.now = 20.0
    again = asyncio.run(dispatcher.handle_all(batches(1)))
    assert delivered(again[0])
    assert waits == []


def test_the_rounds_end_leaves_the_longest_attempt_and_a_minute_of_the_poll_interval_and_time_to_progress():
    for options in (
        {},
        {"dispatcher_rounds_in_flight": 1},
        {"dispatcher_rounds_in_flight": 8},
        {"dispatcher_max_retry_seconds": 0.1, "dispatcher_concurrency": 256},
        {"dispatcher_round_seconds": 3600, "dispatcher_max_retry_seconds": 3600},
    ):
        settings = DispatcherSettings(**options)
        poll_interval = settings.max_poll_interval_ms / 1000
        # A request begun just before the end takes one attempt more at most (a timeout of 300 s at most)
        assert settings.round_end_seconds + PROFILE_TIMEOUT_MAX_SECONDS + 60 <= poll_interval
        # ... and a round has time to begin its batches and see its first requests through their retry budget.
        budget = settings.dispatcher_max_retry_seconds + PROFILE_TIMEOUT_MAX_SECONDS
        assert settings.round_end_seconds >= settings.dispatcher_round_seconds + budget
    # The defaults (2 rounds in flight): 2 h 18 min; one round at a time: 66 min.
    assert DispatcherSettings().round_end_seconds == 8650 - 300 - 60
    assert DispatcherSettings(dispatcher_rounds_in_flight=1).round_end_seconds == 4330 - 300 - 60
