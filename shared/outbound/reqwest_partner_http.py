"""Partner requests on pyreqwest (Rust's reqwest): :class:`~shared.outbound.partner_http.PartnerHttp` for the
dispatcher's hot path (``EXPORT_DISPATCHER_HTTP_CLIENT=reqwest``): about 40 µs of CPU a request against aiohttp's 70
standalone, about 14% less of the dispatcher's CPU a one-member request end to end (README, Performance).

Scope: a request of the default route (``network`` None: a profile without ``tls`` or ``proxy`` settings) to a
host reqwest matches exactly against a pinned address (a lowercase ASCII letters-digits-hyphens name whose last
label is no number, or an IP literal), in a URL reqwest sends as it was rendered (its parsed form prints back byte
for byte). Everything else goes to an inner :class:`~shared.outbound.partner_http.AiohttpPartnerHttp` this one
owns: a profile's TLS or proxy settings, an IDNA or otherwise odd host, a URL reqwest would normalise, a URL with
credentials, and every request when the default route was given its own ``ssl_context`` (reqwest cannot be
limited to that context's CAs). The OAuth token requests (:meth:`ReqwestPartnerHttp.token_client`) are the inner
one's.

The SSRF guard is the project's own (:mod:`shared.outbound.guard`), never a copy: reqwest never resolves a name
itself. A name is resolved by :class:`~shared.outbound.guard.GuardedResolver` (the addresses the policy refuses
dropped, DestinationRefused when none is left); the request then goes out on a client built for that one name
with ``ClientBuilder.resolve`` pinning it to the first allowed address (reqwest looks its overrides up by the
URL's host, which is why only hosts whose form it keeps as written take this path). The pin is resolved and judged
again after :data:`PIN_SECONDS` (aiohttp's DNS cache keeps answers 10 s too): a still-allowed address keeps its
client, another one gets a new client and the old one is closed once its requests are done. At most
``max_clients`` names are pinned (the least recently used one retired beyond). An IP literal is judged by
:func:`~shared.outbound.guard.refuse_ip_literal` and sent on a client without pins (reqwest does not resolve
literals). No redirect is followed, no proxy of the environment used, no cookie kept; at most ``max_body_bytes``
of an answer is read (a longer body is left unread and its connection closed). https trusts the system's CAs
(``SSL_CERT_FILE`` included), as aiohttp's default context does.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import httpx
from aiohttp.abc import AbstractResolver
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http import SERVER_SOFTWARE
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, RequestError, RequestTimeoutError
from pyreqwest.http import Url
from pyreqwest.response import Response

from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.outbound.guard import DestinationRefused, GuardedResolver, refuse_ip_literal
from shared.outbound.partner_http import (
    CLIENT_CERTIFICATE_HINT,
    HANDSHAKE_HINT,
    MAX_BODY_BYTES,
    NO_ANSWER_IN_TIME,
    VERSION_HINT,
    AiohttpPartnerHttp,
    NoAnswer,
    PartnerAnswer,
    TlsRefused,
    handshake_failed,
    untrusted_certificate,
)
from shared.outbound.partner_network import PartnerNetwork

#: How long a name's pinned address is used before it is resolved and judged again.
PIN_SECONDS = 10.0
#: A name reqwest keeps as written (and looks its pins up by): lowercase ASCII letters, digits and hyphens,
#: labels not starting or ending with a hyphen, no trailing dot; ``xn--`` (IDNA) labels are left to aiohttp.
_PLAIN_NAME = re.compile(
    r"(?!.*(?:^|\.)xn--)(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_IPV4 = re.compile(r"[0-9.]+")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
#: The most host forms remembered (whether each takes the reqwest path, and its literal's verdict).
MAX_FORMS = 1_024


@dataclass(eq=False)
class _Pinned:
    """A client whose only name is pinned to ``address`` (None: a client for IP literals), until ``until``."""

    client: Client
    address: str | None
    until: float
    requests: int = 0
    retired: bool = False


@dataclass(frozen=True)
class _Form:
    """How a host is sent: ``literal`` (an IP literal, judged once: ``refusal``) or a plain name."""

    literal: bool
    refusal: str | None = None


@dataclass
class _Clients:
    pinned: OrderedDict[str, _Pinned] = field(default_factory=OrderedDict)
    pinning: dict[str, asyncio.Future[_Pinned | None]] = field(default_factory=dict)
    literals: _Pinned | None = None


class ReqwestPartnerHttp:
    """:class:`~shared.outbound.partner_http.PartnerHttp` on pyreqwest for the default route's plain hosts, on
    :class:`~shared.outbound.partner_http.AiohttpPartnerHttp` for the rest (module docstring)."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        proxies: DestinationPolicy | None = None,
        max_sessions: int = 32,
        max_clients: int = 64,
        pin_seconds: float = PIN_SECONDS,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.max_clients = max_clients
        self.pin_seconds = pin_seconds
        #: Whether the default route may take reqwest (not when it was given its own CAs).
        self.enabled = ssl_context is None
        self.aiohttp = AiohttpPartnerHttp(
            policy,
            max_connections=max_connections,
            ssl_context=ssl_context,
            max_body_bytes=max_body_bytes,
            proxies=proxies,
            max_sessions=max_sessions,
        )
        self._inner_resolver = resolver
        self._resolver: GuardedResolver | None = None  # built inside the loop, on first use
        self._clients = _Clients()
        self._forms: dict[str, _Form | None] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        """The names currently pinned."""
        return len(self._clients.pinned)

    async def send(
        self, request: RenderedRequest, timeout: float, network: PartnerNetwork | None = None
    ) -> PartnerAnswer:
        if network is not None or not self.enabled:
            return await self.aiohttp.send(request, timeout, network)
        try:
            url = Url(request.url)
        except ValueError:
            return await self.aiohttp.send(request, timeout, network)  # it says what is wrong, as before
        host = url.host_str
        form = self._form(host) if host is not None else None
        if form is None or str(url) != request.url or url.username or url.password is not None:
            return await self.aiohttp.send(request, timeout, network)
        if form.refusal is not None:
            raise DestinationRefused(form.refusal)
        pinned = self._literal_client() if form.literal else await self._pinned(host or "", url)
        if pinned is None:  # only scoped IPv6 addresses allowed: reqwest cannot be pinned to one
            return await self.aiohttp.send(request, timeout, network)
        pinned.requests += 1
        try:
            return await self._send(pinned.client, url, request, timeout)
        finally:
            pinned.requests -= 1
            if pinned.retired and pinned.requests == 0:
                self._close_later(pinned)

    async def _send(self, client: Client, url: Url, request: RenderedRequest, timeout: float) -> PartnerAnswer:
        builder = client.request(request.method, url).headers(request.headers).timeout(_timeout(timeout))
        if request.content:
            builder = builder.body_bytes(request.content)
        try:
            async with builder.build_streamed() as response:
                body = await _read_at_most(response, self.max_body_bytes)
                return PartnerAnswer(response.status, response.get_header("retry-after"), body, response.headers)
        except RequestError as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise TlsRefused(tls) from None
            raise NoAnswer(_describe(exc, url)) from None

    def _form(self, host: str) -> _Form | None:
        """How ``host`` is sent on reqwest, None when it is left to aiohttp (judged once per host)."""
        try:
            return self._forms[host]
        except KeyError:
            pass
        kind = host_form(host)
        form = None if kind is None else _Form(literal=kind == "literal")
        if form is not None and form.literal:
            try:
                refuse_ip_literal(self.policy, host)
            except DestinationRefused as exc:  # remembered: raised again by send, with the guard's reason
                form = _Form(literal=True, refusal=str(exc))
        self._forms[host] = form
        if len(self._forms) > MAX_FORMS:
            self._forms.pop(next(iter(self._forms)))
        return form

    def _literal_client(self) -> _Pinned:
        if self._clients.literals is None:
            self._clients.literals = _Pinned(self._builder().build(), None, float("inf"))
        return self._clients.literals

    async def _pinned(self, host: str, url: Url) -> _Pinned | None:
        """The client pinned to an address of ``host`` the guard allows, resolved again after ``pin_seconds``."""
        pinned = self._clients.pinned.get(host)
        if pinned is not None and pinned.until > time.monotonic():
            self._clients.pinned.move_to_end(host)
            return pinned
        pending = self._clients.pinning.get(host)
        if pending is None:  # one resolution per name at a time, whatever the requests waiting for it
            pending = asyncio.ensure_future(self._pin(host, url.port_or_known_default or 0))
            self._clients.pinning[host] = pending
            pending.add_done_callback(functools.partial(self._pinned_done, host))
        return await asyncio.shield(pending)

    def _pinned_done(self, host: str, future: asyncio.Future[_Pinned | None]) -> None:
        self._clients.pinning.pop(host, None)
        if not future.cancelled():
            future.exception()  # retrieved: the waiters raise it

    async def _pin(self, host: str, port: int) -> _Pinned | None:
        if self._resolver is None:
            self._resolver = GuardedResolver(self.policy, self._inner_resolver)
        old = self._clients.pinned.get(host)
        try:
            allowed = await self._resolver.resolve(host, port, socket.AF_UNSPEC)  # DestinationRefused as aiohttp's
        except OSError as exc:
            self._retire(host)
            raise NoAnswer(
                f"ClientConnectorDNSError: Cannot connect to host {host}:{port} [{_os_reason(exc)}]"
            ) from None
        except BaseException:
            self._retire(host)
            raise
        addresses = [answer["host"] for answer in allowed if "%" not in answer["host"]]  # no IPv6 scope: unpinnable
        now = time.monotonic()
        if old is not None and not old.retired and old.address in addresses:
            old.until = now + self.pin_seconds
            self._clients.pinned.move_to_end(host)
            return old
        self._retire(host)
        if not addresses:
            return None
        address = addresses[0]
        pinned = _Pinned(self._builder().resolve(host, address, 0).build(), address, now + self.pin_seconds)
        self._clients.pinned[host] = pinned
        while len(self._clients.pinned) > self.max_clients:
            self._retire(next(iter(self._clients.pinned)))
        return pinned

    def _builder(self) -> ClientBuilder:
        return (
            ClientBuilder()
            .follow_redirects(False)
            .no_proxy()  # only a profile says which proxy is used, never HTTP_PROXY of the process
            .max_connections(self.max_connections)
            .user_agent(SERVER_SOFTWARE)  # what aiohttp sends: partners see the same client
            .brotli(HAS_BROTLI)  # the encodings aiohttp accepts (and says it does: Accept-Encoding)
            .zstd(HAS_ZSTD)
            .runtime_multithreaded(False)
        )

    def _retire(self, host: str) -> None:
        """Stop using ``host``'s client; it is closed once its requests are done."""
        pinned = self._clients.pinned.pop(host, None)
        if pinned is None:
            return
        pinned.retired = True
        if pinned.requests == 0:
            self._close_later(pinned)

    def _close_later(self, pinned: _Pinned) -> None:
        task = asyncio.ensure_future(pinned.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def token_client(self, network: PartnerNetwork | None) -> httpx.AsyncClient:
        """The httpx client of ``network``'s aiohttp session, for the profile's OAuth token requests."""
        return self.aiohttp.token_client(network)

    async def aclose(self) -> None:
        for host in list(self._clients.pinned):
            self._retire(host)
        clients = [pinned.client for pinned in self._clients.pinned.values()]
        if self._clients.literals is not None:
            clients.append(self._clients.literals.client)
            self._clients.literals = None
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._resolver is not None:
            await self._resolver.close()
        await self.aiohttp.aclose()


def host_form(host: str) -> Literal["literal", "name"] | None:
    """``literal`` for an IP literal as reqwest's URL parser writes it (``[…]`` for IPv6), ``name`` for a name it
    keeps as written and matches its pins against; None for anything else (left to aiohttp)."""
    if host.startswith("[") and host.endswith("]"):
        return "literal"
    if _IPV4.fullmatch(host):
        return "literal" if host.count(".") == 3 else None
    if not _PLAIN_NAME.fullmatch(host) or _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return None  # a last label of digits or 0x…: URL parsers read the host as an IPv4 address (0x7f.1)
    return "name"


@functools.lru_cache(maxsize=256)
def _timeout(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


async def _read_at_most(response: Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    reader = response.body_reader
    while size < limit:
        chunk = await reader.read(limit - size)
        if chunk is None:
            break
        chunks.append(bytes(chunk))
        size += len(chunk)
    return b"".join(chunks)


def _causes(exc: RequestError) -> list[str]:
    """The error's causes, without the one quoting the URL (a rendered URL can carry a secret)."""
    causes = (exc.details or {}).get("causes") or []
    return [cause["message"] for cause in causes if "://" not in cause["message"]]


def _tls_failure(exc: RequestError) -> str | None:
    """Why the TLS handshake failed (rustls' words), said for the profile's settings; None for another error."""
    causes = _causes(exc)
    for cause in causes:
        if cause.startswith("invalid peer certificate"):
            return untrusted_certificate(cause)
    reason = next((cause for cause in causes if cause.startswith(_TLS_FAILURES)), None)
    if reason is None:
        return None
    hint = ""
    if any(alert in reason for alert in ("CertificateRequired", "BadCertificate", "UnknownCA")):
        hint = CLIENT_CERTIFICATE_HINT
    elif "HandshakeFailure" in reason:
        hint = HANDSHAKE_HINT
    elif "Version" in reason:
        hint = VERSION_HINT
    return handshake_failed(reason, hint)


#: How rustls' errors of a handshake begin (its ``Error`` type's messages).
_TLS_FAILURES = ("received fatal alert", "received corrupt message", "peer is incompatible", "peer misbehaved")


def _describe(exc: RequestError, url: Url) -> str:
    if isinstance(exc, RequestTimeoutError):
        return NO_ANSWER_IN_TIME
    reason = ": ".join(cause for cause in _causes(exc) if not cause.startswith("client error")) or exc.message
    where = f"{url.host_str}:{url.port_or_known_default}"
    if isinstance(exc, ConnectError):
        return f"ConnectError: Cannot connect to host {where} [{reason}]"
    return f"{type(exc).__name__}: {reason} (host {where})"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
