"""Partner requests on aiohttp directly: the dispatcher's HTTP-client port and its implementation.

The port (:class:`PartnerHttp`) is what the dispatcher's ``Deliverer`` (and a webhook sender) needs: send a rendered
request, get the status, the ``Retry-After`` header and a bounded start of the body, or an error saying why
no answer came. :class:`AiohttpPartnerHttp` connects through the SSRF guard of
:mod:`shared.outbound.guard` (the resolver for names, :func:`refuse_ip_literal` for IP literals),
follows no redirect (a redirect is the partner's answer, as it was with httpx), and reads at most
``max_body_bytes`` of an answer: a partner cannot make the dispatcher hold an unbounded body.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.outbound.guard import guarded_connector, refuse_ip_literal

#: The most of an answer's body read (it is only ever quoted in an error); a longer body is left unread and
#: its connection closed instead of reused.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PartnerAnswer:
    """What a partner answered: the status, its ``Retry-After`` header and the start of the body."""

    status: int
    retry_after: str | None
    body: bytes

    def text(self, limit: int) -> str:
        """The body's first ``limit`` characters, as text (undecodable bytes replaced)."""
        return self.body[: limit * 4].decode("utf-8", errors="replace")[:limit]


class NoAnswer(Exception):
    """The request got no answer: refused, reset, timed out, or a name that does not resolve."""


class PartnerHttp(Protocol):
    """Sends rendered requests to partners."""

    async def send(self, request: RenderedRequest, timeout: float) -> PartnerAnswer:
        """The partner's answer; NoAnswer when none came, DestinationRefused (a PermanentError) when the SSRF
        guard refuses the destination, another exception for a request that cannot be made (e.g. a bad URL)."""
        ...

    async def aclose(self) -> None:
        """Close the connections."""
        ...


class AiohttpPartnerHttp:
    """:class:`PartnerHttp` on one aiohttp session, created on first use inside the running event loop."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.policy = policy
        self.max_connections = max_connections
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = guarded_connector(
                self.policy, max_connections=self.max_connections, ssl_context=self.ssl_context
            )
            # No cookie jar: a partner's cookies must not travel with another export's requests.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def send(self, request: RenderedRequest, timeout: float) -> PartnerAnswer:
        url = URL(request.url, encoded=True)  # rendered URLs are already encoded: keep them byte for byte
        refuse_ip_literal(self.policy, url.host or "")
        try:
            async with self._open().request(
                request.method,
                url,
                headers=request.headers,
                data=request.content,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                body = await _read_at_most(response, self.max_body_bytes)
                return PartnerAnswer(response.status, response.headers.get("Retry-After"), body)
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise NoAnswer(_describe(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "TimeoutError: no answer within the profile's timeout"
    return f"{type(exc).__name__}: {exc}"
