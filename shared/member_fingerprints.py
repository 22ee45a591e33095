"""What change mode hashes and keeps of a member: its fingerprint and its canonical JSON.

The fingerprint is a stable 64-bit hash (BLAKE2b) of the member's values as a JSON array in the query's column
order, keyed by the column names (so a query returning other columns changes every fingerprint): the cheap
form, computed for every member of every run. The canonical JSON (its columns as one object with sorted keys,
values written as the member batches write them) is written only for the members a run sends: it is what
the snapshot keeps as their last values (sent again when the member is removed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

import orjson

from shared.domain.member_hashes import HASH_BYTES
from shared.json_values import finite_jsonable, jsonable

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


class Fingerprints:
    """Fingerprints members of one query's columns."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._key = blake2b(orjson.dumps(list(columns)), digest_size=16).digest()

    def __call__(self, row: Sequence[Any]) -> int:
        """The member's fingerprint, a signed 64-bit integer."""
        try:
            values = orjson.dumps(tuple(row), default=jsonable)
        except orjson.JSONEncodeError:
            values = json.dumps([finite_jsonable(v) for v in row], separators=(",", ":")).encode()
        digest = blake2b(values, digest_size=HASH_BYTES, key=self._key).digest()
        return int.from_bytes(digest, "little", signed=True)


def canonical_json(columns: Sequence[str], row: Sequence[Any]) -> bytes:
    """A member's values as one JSON object with sorted keys."""
    member = dict(zip(columns, row, strict=True))
    try:
        return orjson.dumps(member, option=_SORTED, default=jsonable)
    except orjson.JSONEncodeError:
        # What orjson refuses (integers beyond 64 bits, say) the standard library writes.
        fixed = {c: finite_jsonable(v) for c, v in member.items()}
        return json.dumps(fixed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
