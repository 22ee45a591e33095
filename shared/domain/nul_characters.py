"""NUL characters (U+0000) in what a write would store or a run would bind: found and named, never quoted. Pure.

No field of the catalog has a use for one, and each would break later: PostgreSQL's text cannot hold one (a run's
business unit, a query parameter's value bound to a PostgreSQL member store), URLs, mail headers and the console's
pages read it as an end or an error. A request naming one in its path or a query value is refused by the admin API
before it is read (``services.admin.request_limits``); one in a value, by the checks before a write
(``shared.application.checks``) and by the binding of a query's parameters (``shared.domain.query_parameters``).
"""

from __future__ import annotations

from typing import Any

NUL = "\x00"
#: Why a value holding one is refused (the value is not quoted: it may be a secret).
NOT_ALLOWED = "a NUL character (\\u0000) is not allowed"


def shown(text: str) -> str:
    """``text`` (a mapping's key, a parameter's name) with each NUL written ``\\u0000``, to name it in a message."""
    return text.replace(NUL, "\\u0000")


def nul_places(value: Any, place: str = "") -> list[str]:
    """The dotted places in ``value`` (JSON: mappings, lists, text) of each text or mapping key holding a NUL, in
    order: ``label``, ``json_body.items.0``, ``query_string.a\\u0000b`` (a key holding one is named by itself);
    ``place`` is where ``value`` is (a text at the top is named by it, or ``(value)``)."""
    if isinstance(value, str):
        return [place or "(value)"] if NUL in value else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{place}.{shown(str(key))}" if place else shown(str(key))
            within = nul_places(item, inner)
            if isinstance(key, str) and NUL in key and inner not in within:
                found.append(inner)  # the key itself: named once, whether or not its value holds one too
            found += within
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += nul_places(item, f"{place}.{index}" if place else str(index))
    return found
