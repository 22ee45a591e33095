"""A batch's member keys packed into one compressed value, and a fast membership test on it. Pure.

The delivery log keeps one row per batch outcome (not one per member, which would slow the fold by a
row write per member): the keys are the batch's JSON array, zlib-compressed. Looking a key up
decompresses and searches the bytes for ``,"<key>"`` or ``["<key>"``. The match is exact: inside a JSON
string every ``"`` is escaped, so an unescaped quote after ``[`` or ``,`` opens an element, and the
escaped key followed by an unescaped quote is that element whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import orjson

#: Fast compression: the fold pays it once per batch outcome, and member keys compress well at any level.
LEVEL = 1


def pack_keys(keys: Sequence[str]) -> bytes:
    """The keys as one compressed value (the JSON array of them)."""
    return zlib.compress(orjson.dumps(list(keys)), LEVEL)


def unpack_keys(packed: bytes) -> list[str]:
    """The keys :func:`pack_keys` packed, in order."""
    keys: list[str] = orjson.loads(zlib.decompress(packed))
    return keys


def holds_key(packed: bytes, key: str) -> bool:
    """Whether ``key`` is one of the packed keys (without parsing the array)."""
    data = zlib.decompress(packed)
    needle = orjson.dumps(key)
    return data.startswith(b"[" + needle) or b"," + needle in data
