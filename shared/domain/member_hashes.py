"""Stable 64-bit hashes for change mode's snapshot: a member's key, and its values' canonical JSON. Pure.

The key hash is the hash of the key as text, as batch outcomes name members (``shared.member_keys``), so
an outcome's refused keys find their snapshot rows. BLAKE2b cut to 8 bytes: stable across processes and
releases (unlike Python's ``hash``); at 10M members the chance of two keys sharing a hash is about 3 in a
million.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

#: 64 bits: a BIGINT column and a numpy int64.
HASH_BYTES = 8


def hash64(data: bytes) -> int:
    """A stable signed 64-bit hash (fits a BIGINT column and a numpy int64)."""
    return int.from_bytes(blake2b(data, digest_size=HASH_BYTES).digest(), "little", signed=True)


def key_hash(key: str) -> int:
    """The hash of a member's key (as text)."""
    return hash64(key.encode())


def key_hashes(keys: Iterable[str], count: int = -1) -> npt.NDArray[np.int64]:
    """The hashes of members' keys, in order, as a numpy int64 array (``count``: how many, when known)."""
    return np.fromiter((key_hash(k) for k in keys), dtype=np.int64, count=count)
