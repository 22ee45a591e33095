"""Partner requests on aiohttp directly: the dispatcher's HTTP-client port and its implementation.

The port (:class:`PartnerHttp`) is what the dispatcher's ``Deliverer`` (and a webhook sender) needs: send a rendered
request, get the status, the ``Retry-After`` header and a bounded start of the body, or an error saying why
no answer came. :class:`AiohttpPartnerHttp` connects through the SSRF guard of
:mod:`shared.outbound.guard` (the resolver for names, :func:`refuse_ip_literal` for IP literals),
follows no redirect (a redirect is the partner's answer, as it was with httpx), and reads at most
``max_body_bytes`` of an answer: a partner cannot make the dispatcher hold an unbounded body. A request of a
profile with ``tls`` or ``proxy`` settings goes out on that configuration's own session
(:mod:`shared.outbound.session_pool`), its destination judged before it is sent through a proxy.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.errors import PermanentError
from shared.outbound.partner_network import PartnerNetwork
from shared.outbound.session_pool import SessionPool

#: The most of an answer's body read (it is only ever quoted in an error); a longer body is left unread and
#: its connection closed instead of reused.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PartnerAnswer:
    """What a partner answered: the status, its ``Retry-After`` header and the start of the body; ``headers``
    all its headers (the attempt inspector shows them; a multi-dict's items repeat a repeated header)."""

    status: int
    retry_after: str | None
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def text(self, limit: int) -> str:
        """The body's first ``limit`` characters, as text (undecodable bytes replaced)."""
        return self.body[: limit * 4].decode("utf-8", errors="replace")[:limit]


class NoAnswer(Exception):
    """The request got no answer: refused, reset, timed out, or a name that does not resolve."""


_PROXY_407 = (
    "the profile's proxy refused the request: 407 Proxy Authentication Required (check proxy.username and "
    "proxy.password)"
)


class TlsRefused(PermanentError):
    """The TLS handshake with the partner failed: an untrusted certificate, a client certificate refused or
    missing, no TLS version in common. Not retried: it does not pass by itself."""


class ProxyRefused(PermanentError):
    """The profile's proxy refused its credentials."""


class PartnerHttp(Protocol):
    """Sends rendered requests to partners."""

    async def send(
        self, request: RenderedRequest, timeout: float, network: PartnerNetwork | None = None
    ) -> PartnerAnswer:
        """The partner's answer; NoAnswer when none came, DestinationRefused (a PermanentError) when the SSRF
        guard refuses the destination (or the proxy), NetworkSettingsError (a PermanentError) when the
        profile's ``network`` settings cannot be used, another exception for a request that cannot be made."""
        ...

    async def aclose(self) -> None:
        """Close the connections."""
        ...


#: The most request URLs :class:`AiohttpPartnerHttp` keeps parsed (a member in the URL path: one a member).
MAX_PARSED_URLS = 1_024


class AiohttpPartnerHttp:
    """:class:`PartnerHttp` on aiohttp sessions (one per network configuration, :class:`SessionPool`), created
    on first use inside the running event loop."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        proxies: DestinationPolicy | None = None,
        max_sessions: int = 32,
    ) -> None:
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        #: The sessions; ``proxies``: the policy a proxy's address must pass (default: ``policy``).
        self.sessions = SessionPool(
            policy,
            proxies=proxies,
            max_connections=max_connections,
            default_ssl=ssl_context,
            max_sessions=max_sessions,
        )
        #: The URLs requests were sent to, parsed (a URL is immutable): a batch's one-member requests share theirs.
        self._urls: dict[str, URL] = {}

    def _parsed(self, text: str) -> URL:
        """The URL of a request, parsed once (:attr:`_urls`, at most :data:`MAX_PARSED_URLS`, the oldest forgotten)."""
        url = self._urls[text] = URL(text, encoded=True)  # rendered URLs are already encoded: kept byte for byte
        if len(self._urls) > MAX_PARSED_URLS:
            self._urls.pop(next(iter(self._urls)))
        return url

    async def send(
        self, request: RenderedRequest, timeout: float, network: PartnerNetwork | None = None
    ) -> PartnerAnswer:
        url = self._urls.get(request.url)
        if url is None:
            url = self._parsed(request.url)
        route = self.sessions.route(network)
        judging = self.sessions.destination_judged(route, url.host or "", url.port or 443)
        if judging is not None:  # a proxied name to resolve: most requests have nothing to wait for (no coroutine)
            await judging
        try:
            async with route.session.request(
                request.method,
                url,
                headers=route.headers_for(url.scheme, request.headers),
                data=request.content,
                timeout=_total_timeout(timeout),
                allow_redirects=False,
                proxy_headers=route.proxy_headers,
            ) as response:
                if route.proxied and response.status == 407:  # a plain http request: the proxy's own answer
                    raise ProxyRefused(_PROXY_407)
                body = await _read_at_most(response, self.max_body_bytes)
                return PartnerAnswer(response.status, response.headers.get("Retry-After"), body, response.headers)
        except aiohttp.ClientHttpProxyError as exc:
            if exc.status == 407:  # wrong proxy credentials: retrying will not help
                raise ProxyRefused(_PROXY_407) from None
            raise NoAnswer(f"the profile's proxy answered {exc.status} {exc.message}") from exc
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise TlsRefused(tls) from None
            raise NoAnswer(_describe(exc)) from exc

    def token_client(self, network: PartnerNetwork | None) -> httpx.AsyncClient:
        """The httpx client of ``network``'s session, for the profile's OAuth token requests."""
        return self.sessions.token_client(network)

    async def aclose(self) -> None:
        await self.sessions.aclose()


@functools.lru_cache(maxsize=256)
def _total_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """A request's timeout, built once per value (it is immutable, and each request would build it again)."""
    return aiohttp.ClientTimeout(total=seconds)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    content = response.content
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if content.at_eof():  # the whole body is read: no further read only to meet its end (a request's CPU)
            break
    return b"".join(chunks)


def _tls_failure(exc: BaseException) -> str | None:
    """Why the TLS handshake failed, said for the profile's settings; None when ``exc`` is no TLS failure."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return untrusted_certificate(str(exc.certificate_error))
    reason = getattr(exc, "os_error", None) or exc.__cause__ or exc
    if isinstance(reason, ssl.SSLError) or "[SSL:" in str(exc):
        hint = ""
        if "CERTIFICATE_REQUIRED" in str(exc) or "ALERT_BAD_CERTIFICATE" in str(exc) or "UNKNOWN_CA" in str(exc):
            hint = CLIENT_CERTIFICATE_HINT
        elif "HANDSHAKE_FAILURE" in str(exc):
            hint = HANDSHAKE_HINT
        elif "VERSION" in str(exc):
            hint = VERSION_HINT
        return handshake_failed(_ssl_reason(exc), hint)
    return None


#: What a failed handshake's reason is followed by, when it tells which of the profile's settings to look at.
CLIENT_CERTIFICATE_HINT = (
    " (the partner wants a client certificate it trusts: tls.client_certificate and tls.client_key)"
)
HANDSHAKE_HINT = (
    " (the partner refused the handshake: does it want a client certificate, tls.client_certificate "
    "and tls.client_key, or a TLS version the profile does not offer, tls.min_version?)"
)
VERSION_HINT = " (no TLS version both sides accept: tls.min_version)"
#: Why a request that timed out got no answer.
NO_ANSWER_IN_TIME = "TimeoutError: no answer within the profile's timeout"


def untrusted_certificate(detail: str) -> str:
    """The failure of a partner certificate the client does not trust (``detail``: the TLS library's words)."""
    return f"TLS: the partner's certificate is not trusted ({detail}); tls.ca_bundle must hold the CA that signed it"


def handshake_failed(reason: str, hint: str) -> str:
    """The failure of a TLS handshake (``hint``: one of the ``*_HINT`` or empty)."""
    return f"TLS: the handshake with the partner failed: {reason}{hint}"


def _ssl_reason(exc: BaseException) -> str:
    text = str(exc)
    start = text.find("[SSL:")
    return text[start:].split(" (_ssl.c")[0] if start >= 0 else f"{type(exc).__name__}: {text}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return NO_ANSWER_IN_TIME
    return f"{type(exc).__name__}: {exc}"
