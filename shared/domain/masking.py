"""One masking rule for what is shown of an outgoing request and its answer. Pure.

Used for failure reasons (the dispatcher's outcome events, refused members, dead letters, log lines, run
records, emails; the notifier's webhook ledger and log: :mod:`shared.outbound.failure_reasons`) and for the
attempt inspector's captured attempts (:mod:`shared.domain.attempts`). :class:`Masking` holds one
profile's secret values (resolved) and the names of the headers its authentication sets; then:

- headers named like a credential (:func:`shared.domain.secret_names.secret_name`) or set by the profile's
  authentication are :data:`MASK` whole, and the credentials they carried (the token after ``Bearer``, a Basic
  pair decoded, each cookie value: :func:`credential_values`) are searched for like the profile's secrets;
- every secret value is masked wherever it appears, in any case (``re.IGNORECASE``: a partner that upper-cases
  an echoed hex key still shows it), raw, percent-encoded (wholly or keeping ``/``, escapes in any case),
  JSON-escaped (with or without ``\\/``, and as Go and .NET escape more: ``\\u0026``, ``\\u002B``), HTML-escaped
  (``&amp;``, ``&#39;``...); values shorter than :data:`MIN_SEARCHED` are not searched for;
- in a reason and an answer's body, credentials are also masked by their shape
  (:mod:`shared.domain.credential_patterns`: ``Bearer <token>``, ``api_key=...``, ``"password": "..."``);
- a text is masked before it is cut, so a secret across the cut never leaves its start behind.

Masking is idempotent and its result holds no secret value (it is repeated until nothing changes; each
replacement of a value shortens the text, as a value is longer than the mask).
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shared.domain.case_folding import folded
from shared.domain.credential_patterns import mask_credential_shapes
from shared.domain.secret_names import secret_name, secret_query_name

#: What a masked value reads as.
MASK = "***"
#: Bytes of a body read past the bound, so that a secret that starts before the cut is masked whole.
_SECRET_MARGIN = 1024
#: Characters past a reason's bound that credential shapes are searched in (and read of an answer's body, at
#: least: the longest value searched for, if longer): a shape that starts before the cut is masked whole.
SHAPE_MARGIN = 64
#: Values shorter than this are not searched for (they would mask half the body); a header that carries one
#: is still masked whole by its name. Longer than :data:`MASK`, so that masking always ends.
MIN_SEARCHED = 4
#: Rounds of masking a reason gets to settle (in practice one or two); one that does not is masked whole.
_MAX_ROUNDS = 8
#: Answer headers that hold a URL (or several): their secret-named query values are masked.
_URL_HEADERS = frozenset({"location", "content-location", "link"})
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


@functools.lru_cache(maxsize=4096)  # the same credentials come back attempt after attempt
def _forms(secret: str) -> frozenset[str]:
    """The ways ``secret`` can appear in a request or an answer: raw, percent-encoded (wholly, keeping ``/`` as
    ``quote`` does, or as a form value), JSON-escaped (``/`` as is or ``\\/``; also as the encoders that escape
    more as ``\\u00XX`` write it: :func:`_json_forms`), HTML-escaped (:func:`_html_forms`). Matched in any case, so
    escapes in lower case (``%2f``, ``\\u002b``) need no form of their own."""
    if _UNRESERVED.fullmatch(secret):  # no character any encoding changes (a hex signature, most tokens)
        return frozenset({secret})
    encoded = {
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret, safe=""),
    }
    escaped = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], *_json_forms(secret)}
    return frozenset(
        {secret, *escaped, *(form.replace("/", "\\/") for form in escaped), *encoded, *_html_forms(secret)}
    )


#: Characters JSON encoders write as ``\\u00XX`` to keep a document safe in HTML: Go's ``encoding/json`` and
#: Rails escape these (and U+2028, U+2029)...
_HTML_SAFE_JSON = frozenset("<>&\u2028\u2029")
#: ... and .NET's ``System.Text.Json`` (its default encoder) these, and every character outside ASCII.
_DOTNET_JSON = frozenset("<>&'\"+`")


def _json_forms(secret: str) -> set[str]:
    """``secret`` JSON-escaped as Go (and Rails) and .NET write it by default: a base64 token's ``+`` is
    ``\\u002B`` in a .NET partner's echo."""
    return {
        "".join(_json_char(c, c in _HTML_SAFE_JSON) for c in secret),
        "".join(_json_char(c, c in _DOTNET_JSON or not c.isascii()) for c in secret),
    }


def _json_char(char: str, as_code: bool) -> str:
    if not as_code:
        return json.dumps(char, ensure_ascii=False)[1:-1]
    if char.isascii():
        return f"\\u{ord(char):04x}"
    return json.dumps(char)[1:-1]  # \uXXXX, or a surrogate pair beyond U+FFFF


def _html_forms(secret: str) -> set[str]:
    """``secret`` HTML-escaped, as an error page quotes it: ``&amp;``, ``&lt;``, ``&gt;``, and quotes as they
    are, as ``&quot;``/``&#x27;`` (Python, Django) or as ``&#34;``/``&#39;`` (Go, Jinja)."""
    text = html.escape(secret, quote=False)
    return {text, html.escape(secret), text.replace('"', "&#34;").replace("'", "&#39;")}


@functools.lru_cache(maxsize=256)  # one per profile and credentials sent: compiled once
def _searcher(forms: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first: at one position the longest form wins, so a secret containing another is masked whole.
    return re.compile("|".join(map(re.escape, forms)), re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _lowered(forms: tuple[str, ...]) -> tuple[str, ...] | None:
    """The forms in lower case, when all are ASCII (then they are found in :func:`folded` text where the case-free
    expression finds them, much faster); None otherwise (a secret holding a character outside ASCII)."""
    return tuple(form.lower() for form in forms) if all(form.isascii() for form in forms) else None


def _masked_ascii(value: str, lowered: tuple[str, ...]) -> str:
    """``value`` with every form of ``lowered`` (ASCII, lower case, longest first) masked in any case until none is
    left: each found in ``value`` folded (:func:`folded`: same places), replaced there in ``value``.

    A round takes the forms in turn, each masked wherever it occurs (left to right, not overlapping) and the text
    built again once per form found, not once per occurrence: linear in the text however many times a value
    repeats in it (a body quoting a token a thousand times)."""
    seen = folded(value)
    masked = True
    while masked:  # a mask joined to its neighbours may complete another value: again until none is left
        masked = False
        for form in lowered:
            parts = seen.split(form)  # the same places as str.find from the end of each, in C
            if len(parts) == 1:
                continue
            kept, at = [], 0
            for part in parts:
                kept.append(value[at : at + len(part)])
                at += len(part) + len(form)
            value, seen, masked = MASK.join(kept), MASK.join(parts), True
    return value


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
    """How one profile's requests and answers are masked: its secrets' values and the headers its auth sets.

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
        """``value`` with every secret value in it masked, in any case, until none is left."""
        if not self.secrets or not value:
            return value
        lowered = _lowered(self.secrets)
        if lowered is not None:
            return _masked_ascii(value, lowered)
        searcher = _searcher(self.secrets)
        count = 1
        while count:  # a mask joined to what surrounds it may complete another value: again until none is found
            value, count = searcher.subn(MASK, value)
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
            # Joined, two masks may read as a secret holding the mask and the separator (``*, *``): again.
            shown[name] = self.text(f"{shown[name]}, {masked}") if name in shown else masked
        return shown

    def url(self, url: str) -> str:
        """The URL with secret values masked anywhere, and the values of query parameters named like secrets.

        Again until nothing changes: a value masked by its name may read as a secret holding the mask
        (``token=***``); a URL that does not settle within :data:`_MAX_ROUNDS` rounds is masked whole."""
        for _ in range(_MAX_ROUNDS):
            # Values first: a secret holding '&' or '=' would otherwise be split before it is found.
            masked = self._query_masked(self.text(url))
            if masked == url:
                return masked
            url = masked
        return MASK

    @staticmethod
    def _query_masked(url: str) -> str:
        """``url`` with the values of its query parameters named like secrets masked."""
        parts = urllib.parse.urlsplit(url)
        if not parts.query:
            return url
        pairs = []
        for field in parts.query.split("&"):
            name, sep, _value = field.partition("=")
            plain = urllib.parse.unquote_plus(name)
            pairs.append(f"{name}{sep}{MASK}" if sep and secret_query_name(plain) else field)
        return urllib.parse.urlunsplit(parts._replace(query="&".join(pairs)))

    def reason(self, text: str, limit: int | None = None, *, partial: bool = False, lead: str = "") -> str:
        """A failure's reason, or any text a partner wrote (a ``Link`` header): secret values and credential
        shapes masked, then cut to ``limit`` characters when given (``…`` saying so), after ``lead`` (not cut; if
        given, it ends with a space).
        ``partial``: ``text`` is the start of a longer one (see :meth:`cut`).

        What the cut and the lead join is masked again (a value across them, a secret ending in ``…``), so a
        cut reason may end a few characters past ``limit`` (a value cut through is masked whole again)."""
        masked = self._trimmed(self.text(text), partial)  # values first, in all of it: none is cut through below
        if limit is not None and len(masked) > limit + SHAPE_MARGIN:
            # Shapes are searched for in the part kept and a margin only (however long the longest value).
            masked, partial = masked[: limit + SHAPE_MARGIN], True
        masked = self._settled(masked)
        if limit is not None and (len(masked) > limit or partial):
            return self._settled(f"{lead}{masked[:limit]}…")
        if not lead:
            return masked
        # A lead ending in a space starts no credential shape the text did not start: values across it only.
        joined = lead + masked
        again = self.text(joined)
        return joined if again == joined else self._settled(again)

    def refusal(self, status: int, content: bytes, limit: int) -> str:
        """A refusal's reason: ``HTTP <status>: `` and the start of the answer's body (``content``, as read; bytes
        that are not UTF-8 replaced), masked as :meth:`reason` masks, the body cut to ``limit`` characters.

        Reads ``limit`` plus the longest value searched for (at least :data:`SHAPE_MARGIN`) characters, so that
        a secret starting before the cut is found whole."""
        size = limit + max(self.longest, SHAPE_MARGIN)
        text = content[: size * 4].decode("utf-8", errors="replace")
        partial = len(text) > size or len(content) > size * 4
        return self.reason(text[:size], limit, partial=partial, lead=f"HTTP {status}: ")

    def body(self, content: bytes, limit: int, size: int | None = None, *, shapes: bool = False) -> str:
        """A body as text, masked and cut to ``limit`` characters; a binary body as a note. ``shapes``: credentials
        are masked by their shape too (an answer's body; a request's shows the members as they were sent).

        ``content`` may be the start of a longer body (``size`` bytes in all): it should hold ``limit`` plus
        :data:`_SECRET_MARGIN` bytes.
        """
        total = len(content) if size is None else size
        if not content:
            return ""
        text = decoded(content)
        if text is None:
            return f"(binary body, {total} bytes)"
        return self.cut(text, limit, partial=total > len(content), size=total, shapes=shapes)

    def cut(
        self, text: str, limit: int, *, partial: bool = False, size: int | None = None, shapes: bool = False
    ) -> str:
        """``text`` masked, then cut to ``limit`` characters (saying so, with ``size`` bytes in all when given).

        ``partial``: ``text`` is the start of a longer one. A secret cut off at its end cannot be found, so the
        masked text loses its last (longest value searched for - 1) characters, where such a start would be;
        a value found whole is masked before, wherever it ends."""
        masked = self._trimmed(self._settled(text) if shapes else self.text(text), partial)
        if len(masked) > limit or partial:
            note = f"… (truncated{f', {size} bytes' if size is not None else ''})"
            return self._settled(masked[:limit] + note) if shapes else self.text(masked[:limit] + note)
        return masked

    def _settled(self, text: str) -> str:
        """Secret values and credential shapes masked, again until nothing changes (a text that does not settle
        within :data:`_MAX_ROUNDS` rounds is masked whole)."""
        for _ in range(_MAX_ROUNDS):
            values = self.text(text)  # no value left in it
            masked = mask_credential_shapes(values, MASK)
            if masked == values:
                return masked
            text = masked
        return MASK

    def _trimmed(self, masked: str, partial: bool) -> str:
        # The start of a secret cut off at the end of a partial text was not found: drop what could be one.
        if partial and self.longest > 1:
            return masked[: max(0, len(masked) - (self.longest - 1))]
        return masked


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
