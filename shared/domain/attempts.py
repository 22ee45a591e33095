"""The attempt inspector's record of one HTTP attempt, and how it is made safe to keep. Pure.

A captured attempt is a request the dispatcher sent and what the partner answered (or why nothing came),
kept so that "what exactly did we send, and what did they say?" has an answer. Before anything is stored
it goes through :class:`Masking`: the headers the profile's authentication or signing sets and any header
named like a credential become :data:`MASK`, as does every value of the profile's secrets wherever it
appears (URL, headers, bodies; raw, URL-encoded or JSON-escaped) and every query-string parameter named
like a secret; bodies are cut to a bound and kept as text (a binary body as a note saying so).
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, SecretStr

#: What a masked value reads as.
MASK = "***"

#: Header names that carry credentials whatever the profile: masked in requests and answers.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "webhook-signature", "x-api-key"}
)
#: A header or query parameter whose name says it holds a credential (``Idempotency-Key`` does not match).
_SECRET_NAME = re.compile(
    r"(auth|token|secret|passw|pwd|signature|^sig$|api[-_]?key|^key$|access[-_]?key|session|cookie|credential)",
    re.IGNORECASE,
)
#: Bytes of a body read past the bound, so that a secret that starts before the cut is masked whole.
_SECRET_MARGIN = 1024


def secret_name(name: str) -> bool:
    """Whether a header or query parameter of this name holds a credential, by its name alone."""
    return name.lower() in _CREDENTIAL_HEADERS or _SECRET_NAME.search(name) is not None


def profile_secrets(profile: BaseModel) -> list[SecretStr]:
    """Every secret field of a connection profile (auth, signing, proxy, TLS key), as stored (unresolved)."""
    found: list[SecretStr] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))

    walk(profile)
    return found


@dataclass(frozen=True)
class Masking:
    """How one profile's attempts are masked: its secrets' values and the headers its auth sets.

    ``secrets``: the resolved values (empty strings and values under 4 characters are not searched for: they
    would mask half the body); ``headers``: extra header names to mask (an API-key profile's header).
    """

    secrets: tuple[str, ...] = ()
    headers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, secrets: Iterable[str], headers: Iterable[str] = ()) -> Masking:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) < 4:
                continue
            forms.add(secret)
            forms.add(urllib.parse.quote(secret, safe=""))
            forms.add(urllib.parse.quote_plus(secret, safe=""))
            forms.add(json.dumps(secret)[1:-1])
        # Longest first: a secret containing another is masked whole.
        return cls(tuple(sorted(forms, key=len, reverse=True)), frozenset(h.lower() for h in headers))

    def text(self, value: str) -> str:
        """``value`` with every secret value in it masked."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def header_pairs(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers as a mapping (repeated names joined with ``, ``): credential headers masked whole, secret
        values masked in the others."""
        shown: dict[str, str] = {}
        for name, value in headers:
            masked = MASK if name.lower() in self.headers or secret_name(name) else self.text(value)
            shown[name] = f"{shown[name]}, {masked}" if name in shown else masked
        return shown

    def url(self, url: str) -> str:
        """The URL with secret values masked anywhere, and the values of query parameters named like secrets."""
        url = self.text(url)  # first: a secret holding '&' or '=' would otherwise be split before it is found
        parts = urllib.parse.urlsplit(url)
        if parts.query:
            pairs = []
            for field in parts.query.split("&"):
                name, sep, _value = field.partition("=")
                plain = urllib.parse.unquote_plus(name)
                pairs.append(f"{name}{sep}{MASK}" if sep and secret_name(plain) else field)
            url = urllib.parse.urlunsplit(parts._replace(query="&".join(pairs)))
        return url

    def reason(self, text: str) -> str:
        """A failure's reason (it may quote the URL): secret values and secret-named query values masked."""
        return _QUERY_FIELD.sub(_masked_field, self.text(text))

    def body(self, content: bytes, limit: int, size: int | None = None) -> str:
        """A body as text, masked and cut to ``limit`` characters (bytes, for ASCII); a binary body as a note.

        ``content`` may be the start of a longer body (``size`` bytes in all): it should hold ``limit`` plus
        :data:`_SECRET_MARGIN` bytes, so that a secret starting before the cut is masked whole.
        """
        total = len(content) if size is None else size
        if not content:
            return ""
        text = decoded(content)
        if text is None:
            return f"(binary body, {total} bytes)"
        masked = self.text(text)
        if len(masked) > limit or total > len(content):
            return f"{masked[:limit]}… (truncated, {total} bytes)"
        return masked


_QUERY_FIELD = re.compile(r"([?&])([^=&\s]+)=([^&\s#]*)")


def _masked_field(match: re.Match[str]) -> str:
    lead, name, _value = match.groups()
    return f"{lead}{name}={MASK}" if secret_name(urllib.parse.unquote_plus(name)) else match.group(0)


def window(limit: int) -> int:
    """How many bytes of a body to keep for a bound of ``limit``: the bound plus a margin for masking."""
    return limit + _SECRET_MARGIN


def decoded(content: bytes) -> str | None:
    """UTF-8 text (a character cut at the end is dropped), or None when the bytes are not text."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(content) - 3:
            return None
        text = content[: exc.start].decode("utf-8", errors="replace")
    if "\x00" in text:
        return None
    return text


@dataclass(frozen=True)
class CapturedAttempt:
    """One HTTP attempt as the inspector keeps it (masked, bodies cut): what was sent, and what came back.

    ``status`` is None when no answer came (``error`` says why); ``success`` is the template's view of the
    status; ``attempt`` counts from 1 within the request's retries.
    """

    definition: str
    profile: str
    run_id: uuid.UUID
    batch_index: int
    attempt: int
    at: datetime
    method: str
    url: str
    request_headers: Mapping[str, str]
    request_body: str
    request_bytes: int
    status: int | None
    success: bool
    latency_ms: float
    response_headers: Mapping[str, str]
    response_body: str
    error: str | None = None
    #: The store's id (newest is highest); None before it is stored.
    id: int | None = None
