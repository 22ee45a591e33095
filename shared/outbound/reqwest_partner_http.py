"""Partner requests on pyreqwest (Rust's reqwest): :class:`~shared.outbound.partner_http.PartnerHttp` for the
dispatcher's hot path when ``EXPORT_DISPATCHER_HTTP_CLIENT=reqwest`` (opt-in; the default is aiohttp): less CPU a
request than aiohttp's (README, Performance).

Scope: a request of the default route (``network`` None: a profile without ``tls`` or ``proxy`` settings) to a
host reqwest matches exactly against a pinned address (a lowercase ASCII letters-digits-hyphens name whose last
label is no number, or an IP literal), in a URL reqwest sends as it was rendered (its parsed form prints back byte
for byte). Everything else goes to an inner :class:`~shared.outbound.partner_http.AiohttpPartnerHttp` this one
owns: a profile's TLS or proxy settings, an IDNA or otherwise odd host, a URL reqwest would normalise, a URL with
credentials, a name resolving to more than one allowed address (aiohttp fails over between them; reqwest keeps one
address a name), a host whose TLS handshake failed on reqwest (rustls offers fewer suites than OpenSSL and checks
certificates its own way, e.g. never a host named only in the CN: that request is sent again through aiohttp, which
gives the verdict, and the host's for :data:`TLS_FALLBACK_SECONDS`, logged once), and every
request when the default route was given its own ``ssl_context`` (reqwest cannot be limited to that context's
CAs). The OAuth token requests (:meth:`ReqwestPartnerHttp.token_client`) are the inner one's.

The SSRF guard is the project's own (:mod:`shared.outbound.guard`), never a copy: reqwest never resolves a name
itself. A name is resolved by :class:`~shared.outbound.guard.GuardedResolver` (the addresses the policy refuses
dropped, DestinationRefused when none is left) within the request's timeout (NoAnswer past it; the resolution goes
on for the next requests, and reqwest gets only the time left); the request then goes out on a client built for that
one name with ``ClientBuilder.resolve`` pinning it to its one allowed address (reqwest looks its overrides up by the
URL's host, which is why only hosts whose form it keeps as written take this path). The pin is resolved and judged
again after :data:`PIN_SECONDS` (aiohttp's DNS cache keeps answers 10 s too): the same single allowed address keeps
its client, anything else retires it (closed once its requests are done); a refusal retires it at once, while a
failing resolution (a DNS outage) keeps it until :data:`PIN_GRACE_SECONDS` after the DNS last gave it. At most
``max_clients`` names are remembered (the least recently used one retired beyond; a request waiting for a name's pin
never takes a client retired meanwhile). An IP literal is judged by :func:`~shared.outbound.guard.refuse_ip_literal`
and sent on a client without pins (reqwest does not resolve literals). No redirect is followed, no proxy of the
environment used, no cookie kept; a request with an empty body says ``Content-Length: 0`` as aiohttp's does
(whatever its method); at most ``max_body_bytes`` of an answer is read (a longer body is left unread and its
connection closed). The answer's headers are read at once (lowercase names; a header whose value is not ASCII, UTF-8
included, or longer than aiohttp's 8190-byte line limit is left out; more than 100 headers, hyper's limit, is no
answer; a malformed header line is ignored). https trusts the system's CAs (``SSL_CERT_FILE`` included), as
aiohttp's default context does.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import httpx
import structlog
from aiohttp.abc import AbstractResolver
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, RequestError, RequestTimeoutError
from pyreqwest.http import HeaderMap, Url
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
    handshake_failed,
    untrusted_certificate,
)
from shared.outbound.partner_network import PartnerNetwork

log = structlog.get_logger(__name__)

#: How long a name's pinned address is used before it is resolved and judged again.
PIN_SECONDS = 10.0
#: How long a pinned address is still used after the DNS last confirmed it, while resolving the name fails (an
#: outage of the resolver: aiohttp keeps its keep-alive connections through one too).
PIN_GRACE_SECONDS = 60.0
#: How long a host whose TLS handshake failed on reqwest (rustls) is sent through aiohttp.
TLS_FALLBACK_SECONDS = 600.0
#: The answer headers kept: at most as many as aiohttp reads, none longer than its line limit.
MAX_HEADERS = 128
MAX_HEADER_LINE = 8190
#: A name reqwest keeps as written (and looks its pins up by): lowercase ASCII letters, digits and hyphens,
#: labels not starting or ending with a hyphen, no trailing dot; ``xn--`` (IDNA) labels are left to aiohttp.
_PLAIN_NAME = re.compile(
    r"(?!.*(?:^|\.)xn--)(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_IPV4 = re.compile(r"[0-9.]+")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
#: The most host forms remembered (whether each takes the reqwest path, and its literal's verdict).
MAX_FORMS = 1_024
#: The failure of a request whose name was still being resolved when the client was closed.
CLOSED = "ClientError: the partner HTTP client was closed while the host's name was resolved"


@dataclass(eq=False)
class _Pinned:
    """A client whose only name is pinned to ``address`` (None: a client for IP literals), until ``until``; no
    client: the name is sent through aiohttp until then (more than one allowed address, or only scoped ones).
    ``confirmed``: when the DNS last gave ``address``."""

    client: Client | None
    address: str | None
    until: float
    confirmed: float = 0.0
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
    pinning: dict[str, asyncio.Future[_Pinned]] = field(default_factory=dict)
    literals: _Pinned | None = None
    #: Retired clients still carrying requests (closed when these are done, or at shutdown).
    busy: set[_Pinned] = field(default_factory=set)
    #: ``host:port`` whose TLS handshake failed on reqwest -> until when it goes through aiohttp.
    tls_fallback: OrderedDict[str, float] = field(default_factory=OrderedDict)


class _TlsIncompatible(Exception):
    """The TLS handshake failed on reqwest (no byte of the request was sent): aiohttp is tried."""


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
        pin_grace_seconds: float = PIN_GRACE_SECONDS,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.max_clients = max_clients
        self.pin_seconds = pin_seconds
        self.pin_grace_seconds = pin_grace_seconds
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
        #: Set by :meth:`aclose`: a name's resolution finishing after it builds no client (nobody would close it).
        self._closed = False

    def __len__(self) -> int:
        """The names currently pinned to an address (not those sent through aiohttp)."""
        return sum(pinned.client is not None for pinned in self._clients.pinned.values())

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
        where = f"{host}:{url.port_or_known_default}"
        if self._tls_fallback(where):
            return await self.aiohttp.send(request, timeout, network)
        deadline = time.monotonic() + timeout
        pinned = self._literal_client() if form.literal else await self._pinned(host or "", url, timeout)
        if pinned.client is None:  # more than one allowed address (aiohttp fails over), or only scoped ones
            return await self.aiohttp.send(request, _left(deadline), network)
        pinned.requests += 1
        try:
            return await self._send(pinned.client, url, request, _left(deadline))
        except _TlsIncompatible as exc:
            self._remember_tls_fallback(where, str(exc))
            return await self.aiohttp.send(request, _left(deadline), network)
        finally:
            pinned.requests -= 1
            if pinned.retired and pinned.requests == 0:
                self._close_later(pinned)

    async def _send(self, client: Client, url: Url, request: RenderedRequest, timeout: float) -> PartnerAnswer:
        builder = client.request(request.method, url).headers(request.headers).timeout(_timeout(timeout))
        if request.content:
            builder = builder.body_bytes(request.content)
        elif not _has_content_length(request.headers):  # aiohttp sends it with every empty body, DELETE and GET too
            builder = builder.header("Content-Length", "0")  # (hyper leaves it out; some servers answer 411 without)
        try:
            async with builder.build_streamed() as response:
                headers = _answer_headers(response.headers)
                body = await _read_at_most(response, self.max_body_bytes)
                return PartnerAnswer(response.status, headers.get("retry-after"), body, headers)
        except RequestError as exc:
            tls = _tls_failure(exc)
            if tls is not None:  # aiohttp gives the verdict: OpenSSL's checks are not rustls' (a certificate naming
                raise _TlsIncompatible(tls) from None  # its host only in its CN passes Python's default context)
            if any(cause.startswith("tls handshake") for cause in _causes(exc)):
                raise _TlsIncompatible("the TLS handshake ended without an answer") from None
            raise NoAnswer(_describe(exc, url)) from None

    def _tls_fallback(self, where: str) -> bool:
        until = self._clients.tls_fallback.get(where)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._clients.tls_fallback[where]
        return False

    def _remember_tls_fallback(self, where: str, reason: str) -> None:
        fallback = self._clients.tls_fallback
        if where not in fallback:
            log.warning(
                "the partner's TLS handshake failed on reqwest: its requests go through aiohttp",
                host=where,
                reason=reason,
                seconds=TLS_FALLBACK_SECONDS,
            )
        fallback[where] = time.monotonic() + TLS_FALLBACK_SECONDS
        fallback.move_to_end(where)
        while len(fallback) > MAX_FORMS:
            fallback.popitem(last=False)

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
            if self._closed:  # a request after the close: no client nobody would close
                raise NoAnswer(CLOSED)
            self._clients.literals = _Pinned(self._builder().build(), None, float("inf"))
        return self._clients.literals

    async def _pinned(self, host: str, url: Url, timeout: float) -> _Pinned:
        """The client pinned to an address of ``host`` the guard allows, resolved again after ``pin_seconds``;
        NoAnswer when the resolution takes longer than ``timeout`` (it goes on for the next requests)."""
        deadline = time.monotonic() + timeout
        while True:
            pinned = self._clients.pinned.get(host)
            if pinned is not None and pinned.until > time.monotonic():
                self._clients.pinned.move_to_end(host)
                return pinned
            pending = self._clients.pinning.get(host)
            if pending is None:  # one resolution per name at a time, whatever the requests waiting for it
                pending = asyncio.ensure_future(self._pin(host, url.port_or_known_default or 0))
                self._clients.pinning[host] = pending
                pending.add_done_callback(functools.partial(self._pinned_done, host))
            try:
                pinned = await asyncio.wait_for(asyncio.shield(pending), _left(deadline))
            except TimeoutError:
                raise NoAnswer(NO_ANSWER_IN_TIME) from None
            if not pinned.retired:  # else another name's pin retired it (least recently used) before this resumed
                return pinned

    def _pinned_done(self, host: str, future: asyncio.Future[_Pinned]) -> None:
        self._clients.pinning.pop(host, None)
        if not future.cancelled():
            future.exception()  # retrieved: the waiters raise it

    async def _pin(self, host: str, port: int) -> _Pinned:
        if self._resolver is None:
            self._resolver = GuardedResolver(self.policy, self._inner_resolver)
        old = self._clients.pinned.get(host)
        try:
            allowed = await self._resolver.resolve(host, port, socket.AF_UNSPEC)  # DestinationRefused as aiohttp's
        except OSError as exc:
            now = time.monotonic()
            if old is not None and not old.retired and now < old.confirmed + self.pin_grace_seconds:
                old.until = now + self.pin_seconds  # a DNS outage: the allowed pin (and warm client) is kept a while
                return old
            self._retire(host)
            raise NoAnswer(
                f"ClientConnectorDNSError: Cannot connect to host {host}:{port} [{_os_reason(exc)}]"
            ) from None
        except BaseException:
            self._retire(host)
            raise
        if self._closed:  # closed while the name was resolved: no client is built, the waiting requests end
            raise NoAnswer(CLOSED)
        addresses = list(dict.fromkeys(answer["host"] for answer in allowed))
        now = time.monotonic()
        # One allowed address without an IPv6 scope is pinned; more go through aiohttp, which fails over between them
        # (a pin cannot: reqwest keeps one override a name), only scoped ones too (reqwest cannot be pinned to one).
        address = addresses[0] if len(addresses) == 1 and "%" not in addresses[0] else None
        if old is not None and not old.retired and old.address == address:
            old.until = now + self.pin_seconds
            old.confirmed = now
            self._clients.pinned.move_to_end(host)
            return old
        self._retire(host)
        client = None if address is None else self._builder().resolve(host, address, 0).build()
        pinned = _Pinned(client, address, now + self.pin_seconds, now)
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
            .http1_ignore_invalid_headers_in_responses(True)  # aiohttp returns such an answer too
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
        else:
            self._clients.busy.add(pinned)

    def _close_later(self, pinned: _Pinned) -> None:
        self._clients.busy.discard(pinned)
        if pinned.client is None:
            return
        task = asyncio.ensure_future(pinned.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def token_client(self, network: PartnerNetwork | None) -> httpx.AsyncClient:
        """The httpx client of ``network``'s aiohttp session, for the profile's OAuth token requests."""
        return self.aiohttp.token_client(network)

    async def aclose(self) -> None:
        """Close every client, those with requests still in flight too (their requests fail); a name's resolution
        still running builds none when it ends (its requests fail: :data:`CLOSED`)."""
        self._closed = True
        for host in list(self._clients.pinned):
            self._retire(host)  # the idle ones are closed by _close_later, awaited below
        busy = [*self._clients.busy, *([self._clients.literals] if self._clients.literals is not None else [])]
        self._clients.busy.clear()
        self._clients.literals = None
        for pinned in busy:
            client, pinned.client = pinned.client, None  # closed once: not again when its requests end
            if client is not None:
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


def _left(deadline: float) -> float:
    """The time left until ``deadline``; NoAnswer when none is."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise NoAnswer(NO_ANSWER_IN_TIME)
    return left


def _has_content_length(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "content-length" for name in headers)


def _answer_headers(headers: HeaderMap) -> CIMultiDictProxy[str]:
    """The answer's headers, read at once into a plain multi-dict: a name with a value that is not visible ASCII
    (a byte >= 0x80, UTF-8 too: pyreqwest gives such a value neither as text nor as bytes) is left out, as is a
    header longer than aiohttp's line limit; at most MAX_HEADERS."""
    kept: CIMultiDict[str] = CIMultiDict()
    for name in dict.fromkeys(headers.keys()):
        try:
            values = headers.getall(name)
        except ValueError:
            continue
        for value in values:
            if len(name) + 2 + len(value) <= MAX_HEADER_LINE and len(kept) < MAX_HEADERS:  # ASCII: chars = bytes
                kept.add(name, value)
    return CIMultiDictProxy(kept)


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
        if cause.startswith(_UNTRUSTED):
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


_UNTRUSTED = "invalid peer certificate"
#: How rustls' errors of a handshake begin (its ``Error`` type's messages).
_TLS_FAILURES = ("received fatal alert", "received corrupt message", "peer is incompatible", "peer misbehaved")


def _describe(exc: RequestError, url: Url) -> str:
    if isinstance(exc, RequestTimeoutError):
        return NO_ANSWER_IN_TIME
    reason = ": ".join(cause for cause in _causes(exc) if not cause.startswith("client error")) or exc.message
    where = f"{url.host_str}:{url.port_or_known_default}"
    if isinstance(exc, ConnectError) and not any(
        cause.startswith("client error (SendRequest)") for cause in _causes(exc)
    ):
        return f"ConnectError: Cannot connect to host {where} [{reason}]"
    if isinstance(exc, ConnectError):  # the request went out, the connection was closed before any answer
        return f"ServerDisconnectedError: the connection was closed without an answer (host {where}) [{reason}]"
    return f"{type(exc).__name__}: {reason} (host {where})"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
