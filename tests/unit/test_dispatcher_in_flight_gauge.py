"""The dispatcher's in-flight gauge (``member_export_dispatcher_in_flight_requests``) counts a profile's requests
being delivered at the moment it is read: a plain count kept on the event loop, read when scraped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Hashable

from prometheus_client import REGISTRY

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderedRequest
from shared.events import MemberBatch
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics

GAUGE = "member_export_dispatcher_in_flight_requests"


class Catalog:
    def __init__(self, profile: str) -> None:
        self.objects: dict[Hashable, CatalogObject] = {
            ("HttpTemplate", "t"): HttpTemplate(
                name="t", query="q", profile=profile, path="/m", batch_size=1, json_body={"id": "{{ member.id }}"}
            ),
            ("ConnectionProfile", profile): ConnectionProfile(name=profile, base_url="https://partner.example"),
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind.__name__, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


class HeldPartner:
    """Answers 200 once released; ``reached`` is set when ``expected`` requests are waiting at once."""

    def __init__(self, expected: int) -> None:
        self.expected, self.waiting = expected, 0
        self.reached, self.release = asyncio.Event(), asyncio.Event()

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.waiting += 1
        if self.waiting >= self.expected:
            self.reached.set()
        await self.release.wait()
        self.waiting -= 1
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


def in_flight(profile: str) -> float | None:
    return REGISTRY.get_sample_value(GAUGE, {"profile": profile})


async def scenario() -> None:
    profile = f"in-flight-{uuid.uuid4().hex[:8]}"
    partner = HeldPartner(expected=3)
    catalog = Catalog(profile)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, RetryBudget()),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=3,
    )
    batch = MemberBatch(
        run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=[{"id": n} for n in range(5)]
    )
    try:
        handling = asyncio.ensure_future(dispatcher.handle_all([batch]))
        await asyncio.wait_for(partner.reached.wait(), timeout=10)
        assert in_flight(profile) == 3  # the concurrency's worth, read as a scrape reads it
        partner.release.set()
        results = await asyncio.wait_for(handling, timeout=10)
        assert not any(isinstance(result, BaseException) for result in results)
        assert in_flight(profile) == 0
    finally:
        dispatcher.renderer.close()


def test_the_gauge_reads_the_requests_in_flight_while_they_are_and_zero_after() -> None:
    asyncio.run(scenario())
