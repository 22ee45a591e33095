"""Drive the asynchronous dispatcher from a test's plain thread, as the service's consumer loop does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.inspector import AttemptInspector
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import CatalogObject, SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.events import MemberBatch
from shared.kafka import Outgoing
from shared.outbound.guard import guarded_client
from shared.outbound.partner_http import AiohttpPartnerHttp
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp
from shared.topics import Topics


@dataclass(frozen=True)
class Http:
    """The dispatcher's event loop (on its own thread, as in the service) and its HTTP client."""

    portal: BlockingPortal
    client: httpx.AsyncClient
    partners: AiohttpPartnerHttp | ReqwestPartnerHttp


#: The partner HTTP clients of EXPORT_DISPATCHER_HTTP_CLIENT, by name (tests run the contract on each).
PARTNER_HTTP = {"aiohttp": AiohttpPartnerHttp, "reqwest": ReqwestPartnerHttp}


@contextmanager
def http_on_loop(allowlist: str = "127.0.0.1", partner_http: str = "aiohttp") -> Iterator[Http]:
    """A guarded client (allowing ``allowlist``) on a new event loop thread; partner requests on ``partner_http``."""
    with start_blocking_portal() as portal:
        policy = DestinationPolicy.parse(allowlist)
        http = Http(portal, guarded_client(policy), PARTNER_HTTP[partner_http](policy))
        try:
            yield http
        finally:
            portal.call(http.partners.aclose)
            portal.call(http.client.aclose)


@dataclass(frozen=True)
class BlockingDispatcher:
    """A dispatcher whose ``handle`` blocks the calling thread until the batch's outcome is known."""

    dispatcher: Dispatcher
    portal: BlockingPortal

    def handle(self, batch: MemberBatch) -> list[Outgoing]:
        return self.portal.call(self.dispatcher.handle, batch)

    def handle_all(self, batches: list[MemberBatch]) -> list[list[Outgoing]]:
        results = self.portal.call(self.dispatcher.handle_all, batches)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if not isinstance(result, BaseException)]


def blocking_dispatcher(
    catalog: CatalogStores,
    http: Http,
    policy: RetryBudget,
    topics: Topics,
    cache_seconds: float = 0,
    inspector: AttemptInspector | None = None,
) -> BlockingDispatcher:
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog.definitions, catalog.runs, ttl=cache_seconds),
        deliverer=Deliverer(http.partners, policy),
        tokens=OAuthTokenCache(http.client),
        topics=topics,
        inspector=inspector,
    )
    return BlockingDispatcher(dispatcher, http.portal)


@contextmanager
def dispatch_catalog(
    migrated_catalog: Callable[[str], CatalogStores], tmp_path: Path, *objects: CatalogObject
) -> Iterator[CatalogStores]:
    """A SQLite catalog at ``tmp_path``/catalog.db holding saved query ``q`` (``select 1 as id``) and ``objects``,
    for dispatcher tests: a copy of the session's migrated one (``migrated_catalog``, tests/conftest.py)."""
    catalog = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    for obj in objects:
        catalog.definitions.apply(obj)
    try:
        yield catalog
    finally:
        catalog.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on the event loop until ``condition`` holds, failing after ``timeout`` seconds (a wait for a condition,
    never a pause)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)
