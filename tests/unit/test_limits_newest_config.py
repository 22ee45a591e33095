"""A profile's limits follow the newest config read, never one edited away since: batches read before an edit (holding
the old profile from the catalog cache) and batches read after it overlap; before, each old batch's request rebuilt
the limits back to the old config and the next new one forward again (max_in_flight and rate flipping, the slots
resized and the limiter rebuilt each time)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.fleet_limits import FleetLimits, read_stamp
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.rate_limit import AdaptiveRateLimiter
from shared.domain.catalog_objects import ConnectionProfile, RateLimit
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics
from tests.dispatcher_helpers import until
from tests.unit.test_profile_fairness import batch
from tests.unit.test_waiting_aside_review import Catalog, delivered

DEADLINE = 5.0  # seconds: a wait for a condition, never a pause
OLD = {"max_in_flight": 1}
NEW = {"max_in_flight": 2, "requests_per_second": 50, "burst": 1}


def in_force(fleet: FleetLimits, name: str) -> tuple[int | None, float | None]:
    """A profile's limits as its requests meet them: its max_in_flight capacity and its rate (None: unlimited)."""
    limits = fleet.limits[name]
    rate = limits.rate.max_rate if isinstance(limits.rate, AdaptiveRateLimiter) else None
    return (None if limits.slots is None else limits.slots.capacity), rate


def test_a_config_read_before_the_one_in_force_never_replaces_it():
    lone = FleetLimits(None)
    old, new = RateLimit(max_in_flight=4), RateLimit(max_in_flight=2, requests_per_second=20, burst=5)
    read_old, read_new = read_stamp(), read_stamp()
    limits = lone.limits_of("p", old, read=read_old)
    assert lone.limits_of("p", new, read=read_new) is not limits  # the edit applies
    current = lone.limits["p"]
    slots, limiter = current.slots, current.rate
    seen = [in_force(lone, "p")]
    for config, read in [(old, read_old), (new, read_new), (old, read_old), (new, read_new), (old, read_old)]:
        assert lone.limits_of("p", config, read=read) is current  # the old batch gets the current limits
        seen.append(in_force(lone, "p"))
    assert seen == [(2, 20.0)] * 6  # no flip back to 4 and no rate
    assert current.slots is slots  # neither resized nor rebuilt
    assert current.rate is limiter
    # A later edit still applies (back to the old values, read after: newest wins, not "first seen").
    lone.limits_of("p", RateLimit(max_in_flight=4), read=read_stamp())
    assert in_force(lone, "p") == (4, None)
    lone.limits_of("p", new)  # read=None: read now
    assert in_force(lone, "p") == (2, 20.0)


class CountingCatalog(Catalog):
    """Counts the reads of profile p with its edited limit."""

    def __init__(self) -> None:
        super().__init__(limit=OLD)
        self.edited_reads = 0

    def get(self, kind: type[Any], name: str) -> Any:
        found = super().get(kind, name)
        if isinstance(found, ConnectionProfile) and found.rate_limit == RateLimit.model_validate(NEW):
            self.edited_reads += 1
        return found


class EditingPartner:
    """p's first request edits p's limit in the catalog (OLD to NEW) and is answered once ``go`` is set; the others at
    once. Each p request sent after the edit keeps when it came and the limits it met."""

    def __init__(self, catalog: CountingCatalog) -> None:
        self.catalog = catalog
        self.fleet: FleetLimits | None = None
        self.first_in = asyncio.Event()
        self.go = asyncio.Event()
        self.met: list[tuple[int | None, float | None]] = []
        self.sent: list[float] = []

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        assert self.fleet is not None
        if not self.first_in.is_set():
            self.first_in.set()
            self.catalog.objects[(ConnectionProfile, "p")] = ConnectionProfile(
                name="p", base_url="https://p.example", rate_limit=NEW
            )
            await self.go.wait()
            return PartnerAnswer(200, None, b"")
        self.met.append(in_force(self.fleet, "p"))
        self.sent.append(time.monotonic())
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


def test_requests_of_a_batch_read_before_an_edit_meet_the_edited_limits_while_batches_read_after_it_overlap():
    """p's max_in_flight 1 edited to 2 and 50/s while batch A (read before, 3 requests: the first in flight, the
    others waiting for its slot) still has requests to send and batch B (read after) begins. Every p request sent
    after the edit meets max_in_flight 2 at 50/s, and they go 1/50 s apart. Before, A's requests waiting for their
    slot rebuilt p's limits back to max_in_flight 1 and no rate at all: they met (1, None) and went at once."""
    catalog = CountingCatalog()
    partner = EditingPartner(catalog)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=0),  # each batch reads p again
        deliverer=Deliverer(partner, RetryBudget(max_attempts=1)),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=2,
    )
    partner.fleet = dispatcher.fleet

    async def main() -> list[Any]:
        first = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 0, members=3)]))
        await asyncio.wait_for(partner.first_in.wait(), DEADLINE)
        second = asyncio.ensure_future(dispatcher.handle_all([batch("tp", 1)]))
        await until(lambda: catalog.edited_reads > 0)  # B read the edited profile
        partner.go.set()
        return [*await asyncio.wait_for(first, DEADLINE), *await asyncio.wait_for(second, DEADLINE)]

    results = asyncio.run(main())
    assert [delivered(result) for result in results] == [3, 1]
    assert partner.met == [(2, 50.0)] * 3  # A's last two and B's
    assert in_force(dispatcher.fleet, "p") == (2, 50.0)
    gaps = [later - earlier for earlier, later in zip(partner.sent, partner.sent[1:], strict=False)]
    assert min(gaps) >= 0.015, gaps  # 50/s, burst 1: 0.02 s apart (a timer may fire a little early)
