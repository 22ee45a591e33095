"""The request target a template renders: every value one path segment, the template's shape kept. Pure.

A template's ``path`` is Jinja: its literal text is the template author's, its ``{{ … }}`` values are a
member's data. Each value is percent-encoded as one path segment (everything but RFC 3986's unreserved
characters, so ``/``, ``?``, ``#``, ``%`` and ``&`` included): a value can neither climb the path, nor
start a query or a fragment, nor smuggle an already-encoded ``%2e%2e``. What encoding leaves as it is, a
value that is exactly ``.`` or ``..``, is refused, as is any rendered path that has a dot segment (HTTP
clients and servers remove them, RFC 3986 section 5.2.4), a fragment, or a control character.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from shared.domain.http_fields import source_problem


def path_segment(value: Any) -> str:
    """A rendered value as one path segment: percent-encoded but for unreserved characters."""
    return quote(str(value), safe="")


def path_problem(path: str) -> str | None:
    """Why a rendered path may not be sent (None: it may)."""
    if "#" in path:
        return "has a '#': a fragment is never sent"
    problem = source_problem(path)
    if problem is not None:
        return problem
    for segment in path.split("?", 1)[0].split("/"):
        if unquote(segment) in (".", ".."):
            return f"has a '{segment}' segment, which would move the request up the path"
    return None
