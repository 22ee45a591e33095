"""One profile's waits do not starve the others, against real HTTP servers on 127.0.0.1: a partner answering after a
second, behind a ``max_in_flight: 1`` profile, and a fast one, in one round of the dispatcher."""

import time
from collections.abc import Callable

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome
from shared.topics import Topics
from tests.dispatcher_helpers import dispatch_catalog, http_on_loop
from tests.unit.test_profile_fairness import batch

pytestmark = pytest.mark.integration

SLOW_SECONDS = 1.0  # the slow partner's answer
CONCURRENCY = 4
SLOW_BATCHES = 2 * CONCURRENCY  # more than the workers: each waits for the profile's one slot
FAST_MEMBERS = 5  # one member a request


def test_a_max_in_flight_1_profiles_slow_partner_does_not_hold_back_a_fast_profiles_requests(
    tmp_path, migrated_catalog: Callable[[str], CatalogStores]
):
    with (
        HttpReceiver(delay=SLOW_SECONDS) as slow,
        HttpReceiver() as fast,
        http_on_loop() as http,
        dispatch_catalog(migrated_catalog, tmp_path) as catalog,
    ):
        catalog.definitions.apply(ConnectionProfile(name="slow", base_url=slow.url, rate_limit={"max_in_flight": 1}))
        catalog.definitions.apply(ConnectionProfile(name="fast", base_url=fast.url))
        catalog.definitions.apply(HttpTemplate(name="ts", query="q", profile="slow", path="/m"))
        catalog.definitions.apply(HttpTemplate(name="tf", query="q", profile="fast", path="/m", batch_size=1))
        dispatcher = Dispatcher(
            objects=CatalogCache(catalog.definitions, catalog.runs, ttl=60),
            deliverer=Deliverer(http.partners, RetryBudget(max_attempts=1)),
            tokens=OAuthTokenCache(http.client),
            topics=Topics("x."),
            concurrency=CONCURRENCY,
        )
        # The slow profile's batches first in the round, then the fast profile's.
        batches = [batch("ts", i, 1) for i in range(SLOW_BATCHES)] + [batch("tf", 100, FAST_MEMBERS)]
        started = time.time()
        results = http.portal.call(dispatcher.handle_all, batches)
        slow_answers = sorted(receipt.received_at for receipt in slow.receipts())  # noted as each is answered
        fast_arrivals = sorted(receipt.received_at for receipt in fast.receipts())
    outcomes = [RUN_EVENT_ADAPTER.validate_json(result[-1].value) for result in results if isinstance(result, list)]
    assert [o.delivered for o in outcomes if isinstance(o, BatchOutcome)] == [1] * SLOW_BATCHES + [FAST_MEMBERS]
    assert len(slow_answers) == SLOW_BATCHES
    assert slow_answers[-1] - started >= SLOW_BATCHES * SLOW_SECONDS * 0.95  # one at a time: max_in_flight 1
    assert len(fast_arrivals) == FAST_MEMBERS
    # Every fast request arrived before the slow partner's first answer, well within its one second.
    fast_took = fast_arrivals[-1] - started
    assert fast_arrivals[-1] < slow_answers[0], f"the fast profile's requests took {fast_took:.2f} s"
    assert fast_took < SLOW_SECONDS / 2
