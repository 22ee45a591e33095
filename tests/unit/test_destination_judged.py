"""The SSRF guard on the partner request's path, without a coroutine when it has nothing to wait for (issue 18).

Each request's destination is judged as before: an IP literal by the policy, a host name through a proxy by every
address it resolves to (a verdict kept 10 s), a name without a proxy by the connector's resolver. What changed is
only that a request with nothing to wait for (a literal, an unproxied name, a fresh verdict) is judged at once, and
that its URL is parsed once: a request to a refused destination is refused every time, whatever was sent before.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.outbound.guard import DestinationRefused
from shared.outbound.partner_http import AiohttpPartnerHttp
from shared.outbound.session_pool import Route, SessionPool


class Resolver:
    """Answers each name with ``address``, counting the lookups."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.lookups = 0

    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[dict[str, Any]]:
        self.lookups += 1
        return [{"host": self.address, "port": port}]


def proxied_pool(address: str) -> tuple[SessionPool, Route, Resolver]:
    pool = SessionPool(DestinationPolicy())
    resolver = Resolver(address)
    pool._resolver = resolver  # type: ignore[assignment]
    return pool, Route(None, proxied=True), resolver  # type: ignore[arg-type]  # no session: nothing is sent


def test_a_proxied_name_is_judged_by_its_addresses_then_admitted_at_once_while_its_verdict_is_fresh():
    pool, route, resolver = proxied_pool("93.184.216.34")
    judging = pool.destination_judged(route, "partner.example", 443)
    assert judging is not None  # never judged: resolved first
    asyncio.run(judging)  # type: ignore[arg-type]  # allowed: a public address
    assert pool.destination_judged(route, "partner.example", 443) is None  # its fresh verdict: nothing to wait for
    assert resolver.lookups == 1

    resolver.address = "10.0.0.5"  # the name now points inside
    pool._verdicts["partner.example"] = (0.0, None)  # the verdict's 10 s are over
    judging = pool.destination_judged(route, "partner.example", 443)
    assert judging is not None
    with pytest.raises(DestinationRefused, match="judged before sending through the profile's proxy"):
        asyncio.run(judging)  # type: ignore[arg-type]
    with pytest.raises(DestinationRefused):  # refused again at once while the refusal is fresh
        pool.destination_judged(route, "partner.example", 443)
    assert resolver.lookups == 2


def test_a_private_literal_is_refused_at_once_every_time_with_or_without_a_proxy():
    pool, proxied, resolver = proxied_pool("93.184.216.34")
    direct = Route(None, proxied=False)  # type: ignore[arg-type]
    for route in (direct, proxied, direct):
        with pytest.raises(DestinationRefused):
            pool.destination_judged(route, "10.0.0.1", 443)
    assert pool.destination_judged(direct, "partner.example", 443) is None  # the connector's resolver judges it
    assert pool.destination_judged(proxied, "93.184.216.34", 443) is None  # a public literal: no lookup
    assert resolver.lookups == 0


def test_a_url_parsed_once_is_still_judged_at_each_request():
    async def sent() -> list[str]:
        partners = AiohttpPartnerHttp(DestinationPolicy())
        refusals = []
        try:
            for _ in range(3):
                request = RenderedRequest("POST", "http://10.0.0.1:8080/members", {}, b"{}")
                with pytest.raises(DestinationRefused) as refused:
                    await partners.send(request, 1.0)
                refusals.append(str(refused.value))
        finally:
            await partners.aclose()
        return refusals

    refusals = asyncio.run(sent())
    assert len(refusals) == 3
    assert len(set(refusals)) == 1
    assert "10.0.0.1" in refusals[0]
