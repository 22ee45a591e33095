"""The SSRF guard at connect time, and the httpx client on it (token requests).

Partner requests (the hot path) go straight through aiohttp (:mod:`shared.outbound.partner_http`), or through
reqwest pinned to the addresses :class:`GuardedResolver` allowed (:mod:`shared.outbound.reqwest_partner_http`):
httpx's own per-request handling (request and URL models, cookies, response streams) was measured at about
a third of the dispatcher's event-loop CPU for one-member requests (README, Performance). Token requests
keep httpx's API, on aiohttp's transport (httpx's own transport was far behind under concurrency,
encode/httpx#3215). Both connect through :func:`guarded_connector`.

The guard: every host name is resolved by :class:`GuardedResolver`, which drops the addresses the
:class:`~shared.domain.destinations.DestinationPolicy` refuses, so aiohttp only ever connects to a
checked address (a DNS answer cannot change between the check and the connection; TLS still verifies
the certificate against the host name). aiohttp does not consult a resolver for IP literals, so
:func:`refuse_ip_literal` checks those before a request leaves. Both ask
:meth:`DestinationPolicy.refusal`, the function the save-time check asks too, which judges an IPv6
address carrying an IPv4 address (mapped, translated, compatible, 6to4, NAT64, Teredo) by that IPv4.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from shared.domain.destinations import DestinationPolicy
from shared.errors import PermanentError


class DestinationRefused(PermanentError):
    """The destination resolves to an address the SSRF guard refuses."""


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver and keeps only the addresses the policy allows."""

    def __init__(self, policy: DestinationPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        allowed, refusals = [], []
        for answer in answers:
            refusal = self.policy.refusal(host, ipaddress.ip_address(answer["host"].split("%")[0]))
            if refusal is None:
                allowed.append(answer)
            else:
                refusals.append(refusal)
        if not allowed:
            raise DestinationRefused(refusals[0] if refusals else f"{host} does not resolve")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def refuse_ip_literal(policy: DestinationPolicy, host: str) -> None:
    """Raise DestinationRefused for an IP-literal host the policy refuses (a name: GuardedResolver checks
    what it resolves to; aiohttp does not consult the resolver for literals)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    refusal = policy.refusal(host, address)
    if refusal is not None:
        raise DestinationRefused(refusal)


def guarded_connector(
    policy: DestinationPolicy, *, max_connections: int, ssl_context: ssl.SSLContext
) -> aiohttp.TCPConnector:
    """An aiohttp connector that only connects to addresses the policy allows (build it inside the loop)."""
    return aiohttp.TCPConnector(limit=max_connections, ssl=ssl_context, resolver=GuardedResolver(policy))


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks IP-literal destinations (host names are checked by the resolver), then sends with ``inner``."""

    def __init__(self, policy: DestinationPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self.policy = policy
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        refuse_ip_literal(self.policy, request.url.host)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_client(
    policy: DestinationPolicy, *, max_connections: int = 100, verify: ssl.SSLContext | bool = True, **options: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on aiohttp whose every connection passes the SSRF guard (the dispatcher's
    token requests; partner requests go through :class:`shared.outbound.partner_http.AiohttpPartnerHttp`).

    Create and use it on one event loop (aiohttp's session is bound to the loop it starts on).
    """
    ssl_context = httpx.create_ssl_context(verify=verify)

    def session() -> aiohttp.ClientSession:
        # Built lazily by the transport, inside the running loop, as aiohttp requires.
        connector = guarded_connector(policy, max_connections=max_connections, ssl_context=ssl_context)
        return aiohttp.ClientSession(connector=connector)

    transport = GuardedTransport(policy, AiohttpTransport(client=session))
    return httpx.AsyncClient(transport=transport, **options)
