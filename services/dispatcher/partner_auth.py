"""Authentication headers from a connection profile; secrets resolved at dispatch time, never logged."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from shared.domain.catalog_objects import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    ConnectionProfile,
    NoAuth,
    OAuth2ClientCredentials,
)
from shared.domain.secret_references import resolve_secret
from shared.errors import PermanentError, RetryableError
from shared.outbound.partner_network import PartnerNetwork

# Refresh OAuth tokens this long before they expire, so a request never leaves with a dying token.
_EXPIRY_MARGIN_SECONDS = 30.0
#: The longest a token is kept, in seconds: a year, longer than a dispatcher runs. A longer ``expires_in`` (even an
#: integer beyond a float's range) is cut to it; a token revoked before is dropped on the partner's 401 anyway.
LONGEST_TOKEN_LIFETIME_SECONDS = 365 * 86_400.0
#: An access token as RFC 6749 (appendix A.12) has it: visible ASCII, so that it can go in a header.
_ACCESS_TOKEN = re.compile(r"[\x20-\x7e]+")


class TokenKey(NamedTuple):
    """What a cached token is valid for: a token goes only where the profile pointed when it was fetched.

    A profile re-pointed at another partner (base URL), token endpoint, client or scope gets a new token:
    the old partner's token never travels to the new host.
    """

    profile: str
    token_url: str
    client_id: str
    base_url: str
    scope: str | None


class OAuthTokenCache:
    """Client-credentials tokens per profile and destination (:class:`TokenKey`), cached until shortly before
    they expire.

    ``client`` sends the token requests of profiles without ``tls`` or ``proxy`` settings; ``clients`` gives
    the client of a profile's network settings (its CA, client certificate and proxy, as its partner
    requests use them: ``AiohttpPartnerHttp.token_client``).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        clients: Callable[[PartnerNetwork], httpx.AsyncClient] | None = None,
    ) -> None:
        self.client = client
        self.clients = clients
        self._tokens: dict[TokenKey, tuple[str, float]] = {}
        # One fetch at a time: concurrent batches of a profile wait for the token the first one gets.
        self._lock = asyncio.Lock()

    async def token(
        self,
        profile_name: str,
        auth: OAuth2ClientCredentials,
        base_url: str,
        network: PartnerNetwork | None = None,
    ) -> str:
        """A token for the profile's client at its token URL, to be sent to ``base_url``: cached, or fetched
        (through ``network``, the profile's TLS and proxy settings, when it has some)."""
        key = TokenKey(profile_name, auth.token_url, auth.client_id, base_url, auth.scope)
        cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]  # the common case, without queueing on the lock
        async with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            form = {
                "grant_type": "client_credentials",
                "client_id": auth.client_id,
                "client_secret": resolve_secret(auth.client_secret),
            }
            if auth.scope:
                form["scope"] = auth.scope
            try:
                client = self.client if network is None or self.clients is None else self.clients(network)
                response = await client.post(auth.token_url, data=form)
            except httpx.TransportError as exc:
                raise RetryableError(f"OAuth token endpoint unreachable: {type(exc).__name__}") from None
            if response.status_code >= 500 or response.status_code == 429:
                raise RetryableError(f"OAuth token endpoint answered {response.status_code}")
            if response.status_code != 200:
                raise PermanentError(f"OAuth token endpoint refused the client credentials ({response.status_code})")
            token, lifetime = token_answer(response)
            self.forget(profile_name)  # a token of the profile's former destination is of no more use
            self._tokens[key] = (token, time.monotonic() + max(0.0, lifetime - _EXPIRY_MARGIN_SECONDS))
            return token

    def cached(self, profile_name: str) -> list[str]:
        """The profile's tokens held now (expired ones too: a request may have carried one), to be masked."""
        return [token for key, (token, _) in self._tokens.items() if key.profile == profile_name]

    def forget(self, profile_name: str) -> None:
        """Drop the profile's tokens (a 401 says the partner revoked one): the next request fetches anew."""
        for key in [key for key in self._tokens if key.profile == profile_name]:
            del self._tokens[key]


def token_answer(response: httpx.Response) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint's 200 (RFC 6749, section 5.1).

    An answer that is not a JSON object with a string ``access_token`` of visible ASCII (RFC 6749's
    VSCHAR, so it can go in a header) and a numeric ``expires_in`` is a PermanentError saying which; the
    body is never quoted (it may hold a credential).
    """
    try:
        payload = response.json()
    except ValueError:  # not JSON, or not in the encoding it claims
        kind = response.headers.get("Content-Type", "no Content-Type")[:100]
        raise PermanentError(f"OAuth token endpoint answered 200 with a body that is not JSON ({kind})") from None
    if not isinstance(payload, dict):
        raise PermanentError("OAuth token endpoint answered 200 with JSON that is not an object")
    token = payload.get("access_token")
    if not isinstance(token, str) or not _ACCESS_TOKEN.fullmatch(token):
        raise PermanentError("OAuth token endpoint answered 200 without a usable access_token")
    expires_in = payload.get("expires_in", 3600)
    try:
        lifetime = float(expires_in)
    except OverflowError:  # an integer beyond a float's range: as long as a token is kept, or already expired
        lifetime = LONGEST_TOKEN_LIFETIME_SECONDS if expires_in > 0 else 0.0
    except (TypeError, ValueError):
        raise PermanentError("OAuth token endpoint answered 200 with an expires_in that is not a number") from None
    if not math.isfinite(lifetime):
        raise PermanentError("OAuth token endpoint answered 200 with an expires_in that is not a number")
    return token, min(lifetime, LONGEST_TOKEN_LIFETIME_SECONDS)


async def auth_headers(profile: ConnectionProfile, tokens: OAuthTokenCache) -> dict[str, str]:
    """The authentication header the profile asks for (none for ``type: none``)."""
    auth = profile.auth
    if isinstance(auth, NoAuth):
        return {}
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{resolve_secret(auth.password)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if isinstance(auth, BearerAuth):
        return {"Authorization": "Bearer " + resolve_secret(auth.token)}
    if isinstance(auth, ApiKeyAuth):
        return {} if auth.header is None else {auth.header: resolve_secret(auth.key)}  # None: in the query
    token = await tokens.token(profile.name, auth, profile.base_url, PartnerNetwork.of(profile))
    return {"Authorization": "Bearer " + token}


def query_key_field(profile: ConnectionProfile) -> str | None:
    """The query field the profile's API key travels in (``in: query``): ``<name>=<the key, URL-encoded>``, its secret
    resolved now (:func:`~shared.domain.secret_references.resolve_secret`: an ``env:``/``file:`` reference read
    again); None for other profiles. The dispatcher resolves it once a batch, as the header key
    (:func:`with_query_field` appends it to each request's URL)."""
    auth = profile.auth
    if not isinstance(auth, ApiKeyAuth) or auth.name is None:
        return None
    return f"{quote(auth.name)}={quoted_key(auth)}"


def with_query_field(url: str, name: str, field: str) -> str:
    """``url`` with the API key's query ``field`` (:func:`query_key_field`, for the parameter ``name``) appended after
    the template's own query. A URL whose query has that parameter already (from the template) is a PermanentError
    naming the parameter, never the key: the partner would read one or the other."""
    query = urlsplit(url).query
    if query and any(given == name for given, _ in parse_qsl(query, keep_blank_values=True)):
        raise PermanentError(
            f"the request's query already has the parameter {name!r}, which the connection profile's api_key "
            "sets: remove it from the template's query_string"
        )
    return f"{url}{'&' if query else ('' if url.endswith('?') else '?')}{field}"


def quoted_key(auth: ApiKeyAuth) -> str:
    """The key as its query parameter carries it (URL-encoded: what the inspector's URL shows, to be masked)."""
    return quote(resolve_secret(auth.key), safe="")
