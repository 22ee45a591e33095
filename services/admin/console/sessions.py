"""The console's sessions: an encrypted, signed cookie holding the API token it was opened with.

Signing in gives the token once; the cookie then carries it encrypted and authenticated (Fernet:
AES-CBC + HMAC-SHA256, with its own timestamp for the expiry), with a random CSRF token. On every request
the token is authenticated again against the configured tokens, so a token taken out of the tokens file
(or given another role) takes effect at the next restart, and sessions need no server-side store: every
admin replica holding the same key reads them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

#: The session cookie and the sign-in form's CSRF cookie (both HttpOnly, SameSite=Strict, path /console).
SESSION_COOKIE = "console_session"
SIGN_IN_COOKIE = "console_sign_in"


@dataclass(frozen=True)
class Session:
    """An open session: the API token it was opened with and the CSRF token its forms must send back."""

    token: str
    csrf: str

    def csrf_matches(self, sent: str | None) -> bool:
        """Whether ``sent`` is this session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class SessionCodec:
    """Seals sessions into cookie values and opens them again, refusing altered or expired ones."""

    def __init__(self, key: str, lifetime_seconds: int) -> None:
        # Any string makes a key: Fernet wants 32 bytes, derived here. Empty: a random key for this process.
        material = hashlib.sha256(key.encode()).digest() if key else secrets.token_bytes(32)
        self._fernet = Fernet(base64.urlsafe_b64encode(material))
        self.lifetime_seconds = lifetime_seconds

    def open_session(self, token: str) -> tuple[Session, str]:
        """A new session for ``token`` and its cookie value."""
        session = Session(token=token, csrf=secrets.token_urlsafe(32))
        sealed = self._fernet.encrypt(json.dumps({"t": session.token, "c": session.csrf}).encode())
        return session, sealed.decode()

    def read(self, cookie: str | None, *, now: int | None = None) -> Session | None:
        """The session a cookie holds, or None (absent, altered, sealed with another key, or expired at ``now``,
        seconds since the epoch, by default the present)."""
        if not cookie:
            return None
        try:
            sealed = cookie.encode()
            opened = (
                self._fernet.decrypt(sealed, ttl=self.lifetime_seconds)
                if now is None
                else self._fernet.decrypt_at_time(sealed, ttl=self.lifetime_seconds, current_time=now)
            )
            payload = json.loads(opened)
        except (InvalidToken, ValueError):
            return None
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("t"), str)
            or not isinstance(payload.get("c"), str)
        ):
            return None
        return Session(token=payload["t"], csrf=payload["c"])
