"""Hostile input for the fuzz suite: random bytes, random JSON, near-valid documents, JSON nested up to
200,000 deep, oversized values (64 KiB to 1.1 MB), huge numbers.

Hypothesis draws one seed per case; the input is built from it with :class:`random.Random`, an order
of magnitude cheaper than drawing every leaf through Hypothesis (whose own cost grows with the number of
draws), which keeps 10,000 cases per property within seconds. A failure prints the seed, which rebuilds
the same input. Deep nesting and big values are built as bytes, never as Python objects
(``json.dumps`` would recurse through them): a document is made with a placeholder string where the
hostile value goes, serialised, and the placeholder's JSON replaced by the hostile bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: The same cases on every run (stable in CI): derandomized, no example database; 10,000 cases unless a test
#: gives its own count (:func:`budgets`).
FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

#: Where a hostile value goes in a document (its JSON form is replaced after serialisation).
HOLE = "\x00hole\x00"
_HOLE_JSON = json.dumps(HOLE).encode()
#: Characters that break naive code: controls, quotes, escapes, bidi overrides, BOM, a lone surrogate,
#: non-BMP, CR/LF, path and template syntax.
_NASTY = [
    "\x00",
    "\x1f",
    '"',
    "\\",
    "\u202e",
    "\ufeff",
    "\ud800",
    "😀",
    "\r\n",
    "../",
    "%2e",
    "{{",
    "{%",
    "é",
    "\u0085",
]
_SPECIAL_STRINGS = [
    "",
    "0",
    "-1",
    "true",
    "null",
    "2026-01-01",
    "2026-01-01T00:00:00Z",
    "a" * 300,
    "UTC",
    "*/5 * * * *",
]

Path = Sequence[str | int]


def random_text(rng: random.Random, max_size: int = 20) -> str:
    """A short string mixing ASCII, nasty characters and any code point."""
    parts = []
    for _ in range(rng.randint(0, max_size)):
        choice = rng.random()
        if choice < 0.6:
            parts.append(chr(rng.randint(0x20, 0x7E)))
        elif choice < 0.85:
            parts.append(rng.choice(_NASTY))
        else:
            parts.append(chr(rng.randint(0, 0x10FFFF)))
    return "".join(parts)


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randint(0, 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**70), 2**70)
    if kind == 3:
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**63) - 1, 10**20])
    if kind == 4:
        return rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf"), 1e-320])
    if kind == 5:
        return rng.choice(_SPECIAL_STRINGS)
    return random_text(rng)


def random_json(rng: random.Random, budget: int = 8) -> Any:
    """A random JSON value of about ``budget`` leaves at most."""
    if budget <= 1 or rng.random() < 0.4:
        return random_scalar(rng)
    size = rng.randint(0, min(4, budget))
    if rng.random() < 0.5:
        return [random_json(rng, budget // max(size, 1)) for _ in range(size)]
    return {random_text(rng, 8): random_json(rng, budget // max(size, 1)) for _ in range(size)}


def mutated(rng: random.Random, seeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One of ``seeds`` (valid documents) with up to three fields replaced, deleted or added."""
    document = dict(rng.choice(seeds))
    for _ in range(rng.randint(0, 3)):
        keys = sorted(document)
        operation = rng.choice(["replace", "replace", "delete", "add"])
        if operation == "replace" and keys:
            document[rng.choice(keys)] = random_json(rng)
        elif operation == "delete" and keys:
            del document[rng.choice(keys)]
        else:
            document[random_text(rng, 10)] = random_json(rng)
    return document


def deeply_nested(rng: random.Random) -> bytes:
    """JSON nested from a few to 200,000 levels deep (arrays, objects or both), sometimes unbalanced."""
    depth = rng.choice([rng.randint(1, 300), rng.randint(300, 5_000), rng.randint(5_000, 200_000)])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")])
    closing = depth if rng.random() < 0.7 else rng.randint(0, depth)
    return opener * depth + b"1" + closer * closing


def oversized(rng: random.Random) -> bytes:
    """64 KiB to 1.1 MB of random bytes, NULs, quotes, backslashes, ASCII or multi-byte UTF-8."""
    size = rng.randint(64 * 1024, 1_100_000)
    fill = rng.choice(["random", "nul", "quote", "backslash", "ascii", "utf8"])
    if fill == "random":
        return rng.randbytes(size)
    unit = {"nul": b"\x00", "quote": b'"', "backslash": b"\\", "ascii": b"a", "utf8": "é€😀".encode()}[fill]
    return (unit * (size // len(unit) + 1))[:size]


def big_string(rng: random.Random) -> bytes:
    """A JSON string of 64 KiB to 1 MB (escapes, a lone surrogate escape, multi-byte characters)."""
    size = rng.randint(64 * 1024, 1_000_000)
    unit = rng.choice(["a", '\\"', "\\u0000", "é", "\\ud800", "😀"])
    return b'"' + (unit * (size // len(unit))).encode() + b'"'


def big_number(rng: random.Random) -> bytes:
    """An integer literal of 20 to 100,000 digits (Python refuses to convert over 4,300 by default)."""
    return rng.choice([b"", b"-"]) + b"9" * rng.randint(20, 100_000) + rng.choice([b"", b".5", b"e999999"])


def _with_hole(document: Any, path: Path) -> Any:
    """``document`` with the value at ``path`` (made when missing) replaced by :data:`HOLE`."""
    if not path:
        return HOLE
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = (list(document) if isinstance(document, list) else []) or [{}]
        index = min(head, len(items) - 1)
        items[index] = _with_hole(items[index], rest)
        return items
    mapping = dict(document) if isinstance(document, dict) else {}
    mapping[head] = _with_hole(mapping.get(head, {}), rest)
    return mapping


def with_hostile_value(rng: random.Random, seeds: Sequence[Mapping[str, Any]], paths: Sequence[Path]) -> bytes:
    """A near-valid document with a deeply nested, huge string or huge number value at one of ``paths``."""
    document = _with_hole(mutated(rng, seeds), rng.choice(paths))
    fragment = rng.choice([deeply_nested, big_string, big_number])(rng)
    return json.dumps(document).encode().replace(_HOLE_JSON, fragment, 1)


def dumps(document: Any) -> bytes:
    """``document`` as JSON bytes (NaN and Infinity as the tokens JSON does not have)."""
    return json.dumps(document).encode()


#: The kinds of hostile document, by weight: near-valid ones twice, to reach the deepest validation.
KINDS = ["bytes", "json", "mutated", "mutated", "nested", "hostile-value", "oversized"]


def build(kind: str, rng: random.Random, seeds: Sequence[Mapping[str, Any]], paths: Sequence[Path]) -> bytes:
    """A document of ``kind`` made with ``rng`` (the same bytes for a generator in the same state)."""
    if kind == "bytes":
        return rng.randbytes(rng.choice([rng.randint(0, 10), rng.randint(0, 300)]))
    if kind == "json":
        return dumps(random_json(rng, 12))
    if kind == "mutated":
        return dumps(mutated(rng, seeds))
    if kind == "nested":
        return deeply_nested(rng)
    if kind == "hostile-value":
        return with_hostile_value(rng, seeds, paths)
    return oversized(rng)


def budgets(ci: int, full: int) -> list[Any]:
    """A fuzz test's case counts, as a parameter: ``ci`` cases in the bounded form ``make test`` runs, ``full`` in
    the long form (marked ``long``: ``make fuzz`` runs both)."""
    return [pytest.param(ci, id=f"{ci}-cases"), pytest.param(full, id=f"{full}-cases", marks=pytest.mark.long)]


#: The case counts of a property: 2,000 in CI, 10,000 in ``make fuzz``.
CASES = budgets(2_000, 10_000)

#: A seed for :class:`random.Random`: the one draw of a fuzz case.
random_seeds = st.integers(0, 2**64 - 1)
