"""The attempt inspector's record of one HTTP attempt, and how it is made safe to keep. Pure.

A captured attempt is a request the dispatcher sent and what the partner answered (or why nothing came),
kept so that "what exactly did we send, and what did they say?" has an answer. Before anything is stored
it goes through :class:`Masking`: the headers the profile's authentication or signing sets and any header
named like a credential (:func:`shared.domain.secret_names.secret_name`) become :data:`MASK`; every value of
the profile's secrets, and every credential the request carried in such a header (the token after
``Bearer``, a Basic pair decoded, an OAuth access token fetched at run time), is masked wherever it appears
(URL, headers, bodies, the no-answer reason; raw, percent-encoded in any case or partly, JSON-escaped with or
without ``\\/``); so is every query-string value named like a secret (in the URL and in the answer's
``Location``, ``Content-Location`` and ``Link``); bodies are cut to a bound and kept as text (a binary body
as a note saying so).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from shared.domain.secret_names import secret_name, secret_query_name

#: What a masked value reads as.
MASK = "***"
#: Bytes of a body read past the bound, so that a secret that starts before the cut is masked whole.
_SECRET_MARGIN = 1024
#: Values shorter than this are not searched for (they would mask half the body); a header that carries one
#: is still masked whole by its name.
MIN_SEARCHED = 4
#: Answer headers that hold a URL (or several): their secret-named query values are masked.
_URL_HEADERS = frozenset({"location", "content-location", "link"})
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


@functools.lru_cache(maxsize=4096)  # the same credentials come back attempt after attempt
def _forms(secret: str) -> frozenset[str]:
    """The ways ``secret`` can appear in a request or an answer: raw, percent-encoded (wholly, keeping ``/`` as
    ``quote`` does, or as a form value; escapes in upper or lower case), JSON-escaped (``/`` as is or ``\\/``)."""
    if _UNRESERVED.fullmatch(secret):  # no character any encoding changes (a hex signature, most tokens)
        return frozenset({secret})
    encoded = {
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret, safe=""),
    }
    lowered = {_PERCENT_ESCAPE.sub(lambda match: match.group(0).lower(), form) for form in encoded}
    escaped = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return frozenset({secret, *escaped, *(form.replace("/", "\\/") for form in escaped), *encoded, *lowered})


def credential_values(value: str) -> Iterator[str]:
    """What a credential header's value holds that may be echoed elsewhere: the value, the token after its
    scheme (``Bearer``, ``Basic``...), a Basic pair decoded (``user:pass``) and its password, each cookie's value
    and each signature after its version (``v1,<signature>``)."""
    yield value
    scheme, _, rest = value.strip().partition(" ")
    if rest and scheme.isalpha():
        yield rest.strip()
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            if pair:
                yield pair
                yield pair.partition(":")[2]
    for part in value.split(";"):
        yield part.strip().partition("=")[2]
    for part in value.split():
        yield part.partition(",")[2]


@dataclass(frozen=True)
class Masking:
    """How one profile's attempts are masked: its secrets' values and the headers its auth sets.

    ``secrets``: the forms searched for, longest first (values under :data:`MIN_SEARCHED` characters are not
    searched for); ``headers``: extra header names to mask (an API-key profile's header).
    """

    secrets: tuple[str, ...] = ()
    headers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, secrets: Iterable[str], headers: Iterable[str] = ()) -> Masking:
        return cls().plus(secrets, headers)

    def plus(self, secrets: Iterable[str], headers: Iterable[str] = ()) -> Masking:
        """This masking and more values (e.g. the credentials a request was sent with) and header names."""
        forms = set(self.secrets)
        for secret in set(secrets):
            if len(secret) >= MIN_SEARCHED:
                forms |= _forms(secret)
        # Longest first: a secret containing another is masked whole.
        ordered = tuple(sorted(forms, key=lambda form: (-len(form), form)))
        return Masking(ordered, self.headers | {h.lower() for h in headers})

    @property
    def longest(self) -> int:
        """The length of the longest value searched for (0 when none is)."""
        return len(self.secrets[0]) if self.secrets else 0

    def masks_header(self, name: str) -> bool:
        """Whether a header of this name is masked whole (the profile's API-key header, or named like a secret)."""
        return name.lower() in self.headers or secret_name(name)

    def sent_credentials(self, headers: Iterable[tuple[str, str]]) -> list[str]:
        """The values the headers masked by name carried (:func:`credential_values`): to be searched for too."""
        return [found for name, value in headers if self.masks_header(name) for found in credential_values(value)]

    def text(self, value: str) -> str:
        """``value`` with every secret value in it masked."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def header_pairs(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers as a mapping (repeated names joined with ``, ``): credential headers masked whole, secret
        values masked in the others, and secret-named query values in those holding URLs."""
        shown: dict[str, str] = {}
        for name, value in headers:
            if self.masks_header(name):
                masked = MASK
            elif name.lower() in _URL_HEADERS:
                masked = self.reason(value)
            else:
                masked = self.text(value)
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
                pairs.append(f"{name}{sep}{MASK}" if sep and secret_query_name(plain) else field)
            url = urllib.parse.urlunsplit(parts._replace(query="&".join(pairs)))
        return url

    def reason(self, text: str, limit: int | None = None, *, partial: bool = False) -> str:
        """A text that may quote URLs (a failure's reason, a ``Link`` header): secret values and secret-named
        query values masked, then cut to ``limit`` characters when given (``partial``: ``text`` is the start of a
        longer one, see :meth:`body`)."""
        masked = _QUERY_FIELD.sub(_masked_field, self.text(self._trimmed(text, partial)))
        if limit is not None and (len(masked) > limit or partial):
            return f"{masked[:limit]}…"
        return masked

    def body(self, content: bytes, limit: int, size: int | None = None) -> str:
        """A body as text, masked and cut to ``limit`` characters; a binary body as a note.

        ``content`` may be the start of a longer body (``size`` bytes in all): it should hold ``limit`` plus
        :data:`_SECRET_MARGIN` bytes. The start of a secret cut off at the slice's end could not be found, so a
        partial slice loses its last (longest value searched for - 1) characters before it is masked.
        """
        total = len(content) if size is None else size
        if not content:
            return ""
        text = decoded(content)
        if text is None:
            return f"(binary body, {total} bytes)"
        return self.cut(text, limit, partial=total > len(content), size=total)

    def cut(self, text: str, limit: int, *, partial: bool = False, size: int | None = None) -> str:
        """``text`` masked, then cut to ``limit`` characters (saying so, with ``size`` bytes in all when given).
        ``partial``: ``text`` is the start of a longer one (see :meth:`body`)."""
        masked = self.text(self._trimmed(text, partial))
        if len(masked) > limit or partial:
            return f"{masked[:limit]}… (truncated{f', {size} bytes' if size is not None else ''})"
        return masked

    def _trimmed(self, text: str, partial: bool) -> str:
        # The start of a secret cut off at the end of a partial text cannot be found: drop what could be one.
        if partial and self.longest > 1:
            return text[: max(0, len(text) - (self.longest - 1))]
        return text


_QUERY_FIELD = re.compile(r"([?&])([^=&\s]+)=([^&\s#>\"]*)")


def _masked_field(match: re.Match[str]) -> str:
    lead, name, _value = match.groups()
    return f"{lead}{name}={MASK}" if secret_query_name(urllib.parse.unquote_plus(name)) else match.group(0)


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
    #: The definition's stable id, as the store recorded it (None before it is stored, or if it was gone).
    definition_id: uuid.UUID | None = None


#: What the store adds to a captured attempt: not part of what was sent and answered.
_STORE_FIELDS = frozenset({"id", "definition_id"})


def attempt_fields(attempt: CapturedAttempt) -> dict[str, Any]:
    """What was sent and answered, field by field (headers as plain dicts): one map for the store and the views."""
    values = {f.name: getattr(attempt, f.name) for f in fields(attempt) if f.name not in _STORE_FIELDS}
    values["request_headers"] = dict(attempt.request_headers)
    values["response_headers"] = dict(attempt.response_headers)
    return values
