"""A member's canonical JSON: what change mode fingerprints (:func:`shared.domain.member_hashes.hash64`) and
what it keeps as the member's last values (sent again when the member is removed).

Its columns as one object with sorted keys, values written as the member batches write them.
"""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Sequence
from typing import Any

import orjson

from shared.querystore.paging import jsonable

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(columns: Sequence[str], row: Sequence[Any]) -> bytes:
    """A member's values as one JSON object with sorted keys."""
    member = dict(zip(columns, row, strict=True))
    try:
        return orjson.dumps(member, option=_SORTED, default=_value)
    except orjson.JSONEncodeError:
        # What orjson refuses (integers beyond 64 bits, say) the standard library writes.
        fixed = {c: _finite(_value(v)) for c, v in member.items()}
        return json.dumps(fixed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return None
    if isinstance(value, dict | list):
        return value
    return jsonable(value)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
