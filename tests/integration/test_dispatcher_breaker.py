"""The dispatcher's circuit breaker against real HTTP servers on 127.0.0.1: a failing partner's batches are held
back (no dead letter, no retry budget spent), refusals do not open it, other profiles are not held."""

from __future__ import annotations

import time

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.breakers import ProfileBreakers
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.fleet_limits import FleetLimits
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, RateLimit
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome
from shared.kafka.held_records import HoldRecord
from tests.dispatcher_helpers import BlockingDispatcher, Http, blocking_dispatcher
from tests.integration import test_dispatcher
from tests.integration.test_dispatcher import TOPICS, batch

pytestmark = pytest.mark.integration

# The dispatcher tests' fixtures, shared: a catalog on SQLite, an HTTP client on its own event loop.
catalog = test_dispatcher.catalog
client = test_dispatcher.client

BREAKER = {"minimum_requests": 3, "failure_rate": 0.5, "window_seconds": 30, "open_seconds": 3, "half_open_probes": 1}


class Clock:
    """The breakers' clock, moved by the test (no waiting out an open period)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def _dispatcher(
    catalog: CatalogStores, client: Http, receiver: HttpReceiver, clock: Clock | None = None
) -> BlockingDispatcher:
    catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url, circuit_breaker=BREAKER))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/m", batch_size=1))
    policy = RetryBudget(max_attempts=10, max_seconds=60, initial_backoff=0.01, max_backoff=0.02)
    dispatcher = blocking_dispatcher(catalog, client, policy, TOPICS)
    dispatcher.dispatcher.breakers = ProfileBreakers(clock=clock or Clock())
    return dispatcher


def test_a_failing_partners_batch_is_held_back_before_its_retries_run_out_then_delivered(catalog, client):
    with HttpReceiver() as receiver:
        receiver.state.share_503 = 1.0
        clock = Clock()
        dispatcher = _dispatcher(catalog, client, receiver, clock)
        with pytest.raises(HoldRecord) as held:
            dispatcher.handle(batch(2))  # two requests, each allowed 10 attempts
        # The breaker opened at the 3rd failure (the other request's attempt under way may still be sent).
        assert 3 <= len(receiver.receipts()) <= 4
        assert held.value.until == clock.now + BREAKER["open_seconds"]
        second = batch(2, index=1)
        with pytest.raises(HoldRecord):
            dispatcher.handle(second)  # open: held at once
        # Nothing of it was sent (an attempt of the first batch cut short may still arrive meanwhile).
        keys = {r.headers.get("idempotency-key", "") for r in receiver.receipts()}
        assert not any(key.startswith(second.identity) for key in keys)

        with HttpReceiver() as healthy:  # another profile's batches go on meanwhile
            catalog.definitions.apply(ConnectionProfile(name="p2", base_url=healthy.url, circuit_breaker=BREAKER))
            catalog.definitions.apply(HttpTemplate(name="t2", query="q", profile="p2", path="/m"))
            [other] = dispatcher.handle(batch(2).model_copy(update={"template": "t2"}))
            assert RUN_EVENT_ADAPTER.validate_json(other.value).delivered == 2

        receiver.state.share_503 = 0.0  # recovered
        clock.now = held.value.until  # the loop hands it back once due: the breaker is half-open then
        [outcome] = dispatcher.handle(batch(2))
    delivered = RUN_EVENT_ADAPTER.validate_json(outcome.value)
    assert isinstance(delivered, BatchOutcome)
    assert (delivered.delivered, delivered.failed) == (2, 0)


def test_refusals_do_not_open_the_breaker(catalog, client):
    with HttpReceiver(reject_status=422) as receiver:
        dispatcher = _dispatcher(catalog, client, receiver)
        for index in range(3):
            letters = dispatcher.handle(batch(2, index))  # refused, isolated and dead-lettered as before
            assert RUN_EVENT_ADAPTER.validate_json(letters[-1].value).failed == 2


def test_a_batch_without_a_share_of_its_profiles_limits_is_held_before_rendering_until_the_next_heartbeat(
    catalog, client
):
    with HttpReceiver() as receiver:
        dispatcher = _dispatcher(catalog, client, receiver)
        catalog.definitions.apply(
            ConnectionProfile(name="p", base_url=receiver.url, rate_limit=RateLimit(max_in_flight=1))
        )
        # A replica of a fleet that has not beaten yet: it may have no share, so it takes none.
        fleet = FleetLimits(_NoBeats(), heartbeat_seconds=5.0, clock=lambda: 100.0)  # type: ignore[arg-type]
        dispatcher.dispatcher.fleet = fleet
        rendered = []
        render = dispatcher.dispatcher.renderer.render

        async def counted(*args, **kwargs):
            rendered.append(args)
            return await render(*args, **kwargs)

        dispatcher.dispatcher.renderer.render = counted  # type: ignore[method-assign]
        with pytest.raises(HoldRecord) as held:
            dispatcher.handle(batch(2))
        assert rendered == []  # held before any work: it comes back until the share is there
        assert held.value.until == 105.0  # at the next heartbeat, not every second
        assert receiver.receipts() == []


class _NoBeats:
    """A fleet store this test never beats in."""
