"""HTTP header rules for templates (RFC 9110): which names a template may set, which values may be sent. Pure.

Names: a template may not set the headers that frame the message or the connection (the HTTP client
sets them from the request itself), nor the ones that carry identity: credentials come only from the
connection profile's ``auth`` (templates are an editor's, profiles an admin's), ``Idempotency-Key`` and
the Standard Webhooks ``webhook-*`` headers only from the dispatcher. Compared case-insensitively.

Values: visible ASCII, space and tab only (RFC 9110, section 5.5). CR, LF and NUL would split or end
the header; other characters have no agreed encoding in a header, so a value with any of them is
refused with its position rather than sent mangled (a template encodes such data explicitly, e.g.
``{{ member.first_name | urlencode }}``).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")

#: Set by the HTTP client from the request: message framing, connection management, expectations.
FRAMING_HEADERS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade",
        "te", "trailer", "expect",
    }
)  # fmt: skip
#: Credentials: only the connection profile's ``auth`` sets them.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Set by the dispatcher on every request: the idempotency key and the Standard Webhooks signature.
DISPATCHER_HEADERS = frozenset({"idempotency-key", "traceparent", "tracestate"})
DISPATCHER_HEADER_PREFIXES = ("webhook-",)


def header_name_problem(name: str) -> str | None:
    """Why a template may not set header ``name`` (None: it may)."""
    if not _TOKEN.fullmatch(name):
        return f"{name!r} is not a header name (RFC 9110: letters, digits and !#$%&'*+-.^_`|~)"
    lower = name.lower()
    if lower in FRAMING_HEADERS:
        return f"header '{name}' is set by the HTTP client from the request (framing and connection)"
    if lower in CREDENTIAL_HEADERS:
        return f"header '{name}' carries credentials, which come only from the connection profile's auth"
    if lower in DISPATCHER_HEADERS or lower.startswith(DISPATCHER_HEADER_PREFIXES):
        return (
            f"header '{name}' is set by the dispatcher (Idempotency-Key, the trace context's traceparent and "
            "tracestate, the Standard Webhooks signature)"
        )
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` may not be sent as a header value (None: it may)."""
    if _FIELD_VALUE.fullmatch(value):
        return None
    for position, char in enumerate(value):
        if char in "\r\n\0":
            return f"has a line break or NUL ({char!r}) at position {position}, which would split the header"
        if (char < " " and char != "\t") or char == "\x7f":
            return f"has a control character ({char!r}) at position {position}"
        if char > "\x7e":
            return (
                f"has a non-ASCII character ({char!r}) at position {position}: header values are ASCII "
                "(RFC 9110, section 5.5); encode it in the template, e.g. with | urlencode"
            )
    return None  # pragma: no cover - the pattern failed, so a character above did


def source_problem(source: str) -> str | None:
    """Why a template source may never render a valid header value or path: a literal control character."""
    for position, char in enumerate(source):
        if (char < " " and char != "\t") or char == "\x7f":
            return f"has a control character ({char!r}) at position {position}"
    return None


def merged_headers(base: dict[str, str], *overrides: dict[str, str]) -> dict[str, str]:
    """``base`` with each of ``overrides`` applied in turn, header names compared case-insensitively."""
    merged = dict(base)
    # Each name present, by its lower case: one look-up an override instead of a pass over the merged names (the
    # dispatcher merges a request's headers per attempt). Names of ``base`` that differ by case only are each
    # replaced, as the pass did.
    present = {name.lower(): name for name in merged}
    if len(present) != len(merged):
        return _merged_slowly(merged, overrides)
    for override in overrides:
        for name, value in override.items():
            lower = name.lower()
            existing = present.get(lower)
            if existing is not None:
                del merged[existing]
            merged[name] = value
            present[lower] = name
    return merged


def _merged_slowly(merged: dict[str, str], overrides: tuple[dict[str, str], ...]) -> dict[str, str]:
    """:func:`merged_headers` for a ``base`` holding names that differ by case only."""
    for override in overrides:
        for name, value in override.items():
            for existing in [known for known in merged if known.lower() == name.lower()]:
                del merged[existing]
            merged[name] = value
    return merged
