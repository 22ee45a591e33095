"""One aiohttp session per network configuration of connection profiles, and the SSRF guard through a proxy.

A profile without ``tls`` or ``proxy`` shares the default session (the system's CAs, no proxy). Each
distinct :class:`~shared.outbound.partner_network.PartnerNetwork` gets its own session, SSL context and
connection pool, used by the profile's partner requests and by its OAuth token requests alike
(:meth:`SessionPool.token_client`). Sessions are cached: at most ``max_sessions`` (the least recently used
one is retired beyond), and the references of each are read again every ``refresh_seconds``, so a rotated
certificate or proxy password is picked up without a restart (a changed profile is another key at once).
A retired session is closed after ``grace_seconds``, letting its requests finish.

Through a proxy, the dispatcher never connects to the partner itself, so the connector's resolver cannot
guard it: before each request the partner's host is resolved here and refused unless *every* address it
resolves to is allowed (an IP literal is judged as it is). The proxy's own address is judged by the
connector's resolver (a name) or here (a literal), under :func:`shared.domain.proxy_policy.proxy_policy`.
The proxy resolves the partner's name again: the check is as good as the DNS answers agree, and the proxy's
own egress rules remain the second line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field

import aiohttp
import httpx
from aiohttp.abc import ResolveResult
from yarl import URL

from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy
from shared.errors import RetryableError
from shared.outbound.guard import DestinationRefused, GuardedResolver
from shared.outbound.partner_network import PartnerNetwork, ResolvedNetwork, resolve, ssl_context_of

#: How long a proxied destination's verdict is kept (aiohttp caches DNS answers 10 s too), and how many at most.
VERDICT_SECONDS = 10.0
MAX_VERDICTS = 1_024
#: The most of a token endpoint's answer read (a token answer is a few hundred bytes).
MAX_TOKEN_ANSWER_BYTES = 64 * 1024


@dataclass
class Route:
    """The session a request goes out on, and whether it goes through a proxy (its destination then
    checked by :meth:`SessionPool.check_destination` before it is sent)."""

    session: aiohttp.ClientSession
    proxied: bool
    #: Sent to the proxy only (``Proxy-Authorization``), with every request of the route.
    proxy_headers: dict[str, str] | None = field(default=None, repr=False)

    def headers_for(self, scheme: str, headers: dict[str, str]) -> dict[str, str]:
        """The request's headers: for a plain ``http`` partner through an authenticating proxy, with the proxy's
        credentials (the request itself goes to the proxy, which consumes them); for ``https`` they travel in
        the ``CONNECT`` only (``proxy_headers``), never inside the tunnel."""
        if self.proxy_headers is None or scheme != "http":
            return headers
        return {**headers, **self.proxy_headers}

    fingerprint: str = ""
    checked_at: float = 0.0
    tokens: httpx.AsyncClient | None = field(default=None, repr=False)


class SessionPool:
    """Sessions by network configuration; build and use it on one event loop."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        proxies: DestinationPolicy | None = None,
        max_connections: int = 100,
        default_ssl: ssl.SSLContext | None = None,
        secrets: SecretReferencePolicy | None = None,
        max_sessions: int = 32,
        refresh_seconds: float = 60.0,
        grace_seconds: float = 330.0,
    ) -> None:
        self.policy = policy
        self.proxies = proxies or policy
        self.max_connections = max_connections
        self.default_ssl = default_ssl or ssl.create_default_context()
        self.secrets = secrets
        self.max_sessions = max_sessions
        self.refresh_seconds = refresh_seconds
        self.grace_seconds = grace_seconds  # the longest profile timeout (300 s) and some
        self._default: Route | None = None
        self._routes: OrderedDict[PartnerNetwork, Route] = OrderedDict()
        self._retired: set[aiohttp.ClientSession] = set()
        self._closing: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._resolver: aiohttp.abc.AbstractResolver | None = None  # built inside the loop, on first use
        #: Host -> (until when, refusal or None): destinations judged for proxied requests, briefly remembered.
        self._verdicts: dict[str, tuple[float, str | None]] = {}
        #: Host -> (whether it is an IP literal, the policy's refusal of it as one): literals' verdicts (pure).
        self._literals: dict[str, tuple[bool, str | None]] = {}

    def __len__(self) -> int:
        """The sessions of profiles' own network configurations currently open (the default one not counted)."""
        return len(self._routes)

    def route(self, network: PartnerNetwork | None) -> Route:
        """The route of ``network`` (None: the default); NetworkSettingsError when its settings cannot be used."""
        if network is None:
            if self._default is None or self._default.session.closed:
                self._default = Route(self._session(self.default_ssl, None), proxied=False)
            return self._default
        route = self._routes.get(network)
        now = time.monotonic()
        if route is not None and now - route.checked_at < self.refresh_seconds and not route.session.closed:
            self._routes.move_to_end(network)
            return route
        resolved = resolve(network, self.secrets)
        if route is not None and route.fingerprint == resolved.fingerprint() and not route.session.closed:
            route.checked_at = now
            self._routes.move_to_end(network)
            return route
        fresh = self._build(resolved, now)
        if route is not None:
            self._retire(route)
        self._routes[network] = fresh
        self._routes.move_to_end(network)
        while len(self._routes) > self.max_sessions:
            self._retire(self._routes.popitem(last=False)[1])
        return fresh

    def _build(self, resolved: ResolvedNetwork, now: float) -> Route:
        proxy = None
        if resolved.proxy_url is not None:
            proxy = URL(resolved.proxy_url)
            refusal = _literal_refusal(self.proxies, proxy.host or "")
            if refusal is not None:
                raise DestinationRefused(_proxy_refusal(refusal))
        headers = None
        if resolved.proxy_username is not None:
            credentials = aiohttp.encode_basic_auth(resolved.proxy_username, resolved.proxy_password or "")
            headers = {"Proxy-Authorization": credentials}
        session = self._session(ssl_context_of(resolved), proxy)
        return Route(
            session,
            proxied=proxy is not None,
            proxy_headers=headers,
            fingerprint=resolved.fingerprint(),
            checked_at=now,
        )

    def _session(self, context: ssl.SSLContext, proxy: URL | None) -> aiohttp.ClientSession:
        # Through a proxy, the connector only ever connects to the proxy: its resolver judges the proxy.
        resolver = _ProxyResolver(self.proxies) if proxy is not None else GuardedResolver(self.policy)
        connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=context, resolver=resolver)
        # No cookie jar: a partner's cookies must not travel with another export's requests; no trust_env:
        # only the profile says which proxy is used (never HTTP_PROXY of the process).
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), proxy=proxy)

    async def check_destination(self, route: Route, host: str, port: int) -> None:
        """Refuse (DestinationRefused) a destination the policy does not allow: an IP literal always, a host
        name when the route goes through a proxy (otherwise the connector's resolver checks what it connects to)."""
        judging = self.destination_judged(route, host, port)
        if judging is not None:
            await judging

    def destination_judged(self, route: Route, host: str, port: int) -> Awaitable[None] | None:
        """:meth:`check_destination` without a coroutine when it has nothing to wait for (a partner request's CPU):
        DestinationRefused raised here, or None once the destination is allowed (an IP literal, a name the connector's
        resolver judges, a proxied name whose verdict is fresh); what to await when a proxied name must be resolved
        to be judged (it raises DestinationRefused then, or a RetryableError when the name does not resolve)."""
        literal = self._literals.get(host)
        if literal is None:  # judged once per host: the policy does not change, parsing an address costs a request
            literal = self._literals[host] = (_is_literal(host), _literal_refusal(self.policy, host))
            if len(self._literals) > MAX_VERDICTS:
                self._literals.pop(next(iter(self._literals)))
        if literal[1] is not None:
            raise DestinationRefused(literal[1])
        if not route.proxied or literal[0]:
            return None
        now = time.monotonic()
        known = self._verdicts.get(host)
        if known is None or known[0] < now:
            return self._judged(host, port, now)
        if known[1] is not None:
            raise DestinationRefused(known[1])
        return None

    async def _judged(self, host: str, port: int, now: float) -> None:
        """A proxied ``host``'s verdict, judged (:meth:`_judge`) and remembered from ``now``; refused: raised."""
        known = self._verdicts[host] = (now + VERDICT_SECONDS, await self._judge(host, port))
        if len(self._verdicts) > MAX_VERDICTS:
            self._verdicts.pop(next(iter(self._verdicts)))
        if known[1] is not None:
            raise DestinationRefused(known[1])

    async def _judge(self, host: str, port: int) -> str | None:
        """Why ``host`` is refused as a destination reached through a proxy (every address judged), or None."""
        if self._resolver is None:
            self._resolver = aiohttp.DefaultResolver()
        try:
            answers = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        except OSError:
            # Retried, never remembered: the dispatcher must resolve partner names itself to judge them (fail closed).
            raise RetryableError(
                f"{host} does not resolve from the dispatcher: it is judged before anything is sent through the "
                "profile's proxy"
            ) from None
        for answer in answers:
            refusal = self.policy.refusal(host, ipaddress.ip_address(answer["host"].split("%")[0]))
            if refusal is not None:
                return f"{refusal} (judged before sending through the profile's proxy)"
        return None

    def token_client(self, network: PartnerNetwork | None) -> httpx.AsyncClient:
        """An httpx client on ``network``'s session (the profile's token requests), guarded like partner requests."""
        route = self.route(network)
        if route.tokens is None:
            route.tokens = httpx.AsyncClient(transport=_RouteTransport(self, route))
        return route.tokens

    def _retire(self, route: Route) -> None:
        session = route.session
        self._retired.add(session)

        def close() -> None:
            self._retired.discard(session)
            task = asyncio.ensure_future(session.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        handle = asyncio.get_running_loop().call_later(self.grace_seconds, close)
        self._closing.add(handle)

    async def aclose(self) -> None:
        """Close every session, retired ones included."""
        for handle in self._closing:
            handle.cancel()
        sessions = [route.session for route in self._routes.values()] + list(self._retired)
        if self._default is not None:
            sessions.append(self._default.session)
        for session in sessions:
            await session.close()
        self._routes.clear()
        self._retired.clear()
        if self._resolver is not None:
            await self._resolver.close()


class _ProxyResolver(GuardedResolver):
    """The guard's resolver for the proxy's name, saying that it is the proxy that was refused."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            return await super().resolve(host, port, family)
        except DestinationRefused as exc:
            raise DestinationRefused(_proxy_refusal(str(exc))) from None


class _RouteTransport(httpx.AsyncBaseTransport):
    """httpx on a route's aiohttp session (its proxy credentials included), its destination checked first.

    For token requests: the answer is read whole, at most :data:`MAX_TOKEN_ANSWER_BYTES`. The session is the
    pool's to close.
    """

    def __init__(self, pool: SessionPool, route: Route) -> None:
        self.pool, self.route = pool, route

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.pool.check_destination(self.route, request.url.host, request.url.port or 443)
        timeout = request.extensions.get("timeout", {})
        try:
            async with self.route.session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=self.route.headers_for(request.url.scheme, dict(request.headers)),
                data=await request.aread() or None,
                allow_redirects=False,
                proxy_headers=self.route.proxy_headers,
                timeout=aiohttp.ClientTimeout(sock_connect=timeout.get("connect"), sock_read=timeout.get("read")),
            ) as response:
                body = await response.content.read(MAX_TOKEN_ANSWER_BYTES)
                headers = [
                    (name, value)
                    for name, value in response.headers.items()
                    if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
                ]
                return httpx.Response(response.status, headers=headers, content=body, request=request)
        except aiohttp.ClientHttpProxyError as exc:
            raise httpx.ProxyError(f"the profile's proxy answered {exc.status}", request=request) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None

    async def aclose(self) -> None:
        pass  # the session is shared with partner requests: the pool closes it


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _literal_refusal(policy: DestinationPolicy, host: str) -> str | None:
    if not _is_literal(host):
        return None  # a name: judged by the connector's resolver when connecting
    return policy.refusal(host, ipaddress.ip_address(host.strip("[]")))


def _proxy_refusal(refusal: str) -> str:
    return f"the profile's proxy: {refusal} (or in EXPORT_ALLOWED_PROXIES, for a proxy only)"
