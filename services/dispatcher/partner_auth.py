"""Authentication headers from a connection profile; secrets resolved at dispatch time, never logged."""

from __future__ import annotations

import asyncio
import base64
import time

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

# Refresh OAuth tokens this long before they expire, so a request never leaves with a dying token.
_EXPIRY_MARGIN_SECONDS = 30.0


class OAuthTokenCache:
    """Client-credentials tokens per profile, cached until shortly before they expire."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._tokens: dict[str, tuple[str, float]] = {}
        # One fetch at a time: concurrent batches of a profile wait for the token the first one gets.
        self._lock = asyncio.Lock()

    async def token(self, profile_name: str, auth: OAuth2ClientCredentials) -> str:
        cached = self._tokens.get(profile_name)
        if cached and cached[1] > time.monotonic():
            return cached[0]  # the common case, without queueing on the lock
        async with self._lock:
            cached = self._tokens.get(profile_name)
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
                response = await self.client.post(auth.token_url, data=form)
            except httpx.TransportError as exc:
                raise RetryableError(f"OAuth token endpoint unreachable: {type(exc).__name__}") from None
            if response.status_code >= 500 or response.status_code == 429:
                raise RetryableError(f"OAuth token endpoint answered {response.status_code}")
            if response.status_code != 200:
                raise PermanentError(f"OAuth token endpoint refused the client credentials ({response.status_code})")
            payload = response.json()
            token = str(payload["access_token"])
            lifetime = float(payload.get("expires_in", 3600))
            self._tokens[profile_name] = (token, time.monotonic() + max(0.0, lifetime - _EXPIRY_MARGIN_SECONDS))
            return token

    def forget(self, profile_name: str) -> None:
        self._tokens.pop(profile_name, None)


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
        return {auth.header: resolve_secret(auth.key)}
    return {"Authorization": "Bearer " + await tokens.token(profile.name, auth)}
