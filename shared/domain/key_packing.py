"""A batch's member keys packed into one compressed value, and a fast membership test on it. Pure.

The delivery log keeps one row per batch outcome (not one per member, which would slow the fold by a
row write per member): the keys are the batch's JSON array, compressed (zstd at its fastest level: a
few times faster than zlib on such arrays, and smaller), and its refused members (key, status, reason,
attempts) another compressed array beside them. Looking a key up
decompresses and searches the bytes for ``,"<key>"`` or ``["<key>"``. The match is exact: inside a JSON
string every ``"`` is escaped, so an unescaped quote after ``[`` or ``,`` opens an element, and the
escaped key followed by an unescaped quote is that element whole.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import orjson
import zstandard

#: Fast compression: the fold pays it once per batch outcome, and member keys compress well at any level.
LEVEL = 1
#: zstd (de)compressors are not for concurrent use: one each a thread (the admin API answers on several).
_local = threading.local()


def _compress(data: bytes) -> bytes:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=LEVEL)
    packed: bytes = compressor.compress(data)
    return packed


def _decompress(packed: bytes) -> bytes:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    data: bytes = decompressor.decompress(packed)
    return data


def pack_keys(keys: Sequence[str]) -> bytes:
    """The keys as one compressed value (the JSON array of them)."""
    return _compress(orjson.dumps(list(keys)))


def unpack_keys(packed: bytes) -> list[str]:
    """The keys :func:`pack_keys` packed, in order."""
    keys: list[str] = orjson.loads(_decompress(packed))
    return keys


def holds_key(packed: bytes, key: str) -> bool:
    """Whether ``key`` is one of the packed keys (without parsing the array)."""
    data = _decompress(packed)
    needle = orjson.dumps(key)
    return data.startswith(b"[" + needle) or b"," + needle in data


def pack_refused(refused: Sequence[tuple[str, int | None, str, int]]) -> bytes | None:
    """A batch's refused members (key, status, reason, attempts) as one compressed value; None when none."""
    return _compress(orjson.dumps([list(member) for member in refused])) if refused else None


def refusal_of(packed: bytes | None, key: str) -> tuple[int | None, str, int] | None:
    """The (status, reason, attempts) of ``key`` among packed refused members; None when it was not refused."""
    if packed is None:
        return None
    for member_key, status, reason, attempts in orjson.loads(_decompress(packed)):
        if member_key == key:
            return status, reason, attempts
    return None
