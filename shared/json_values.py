"""A database driver's value as a JSON value: one rule for every side that writes members (the query store's pages,
the member batches' encoding, the member fingerprints). No database client here: the application layer (a replay's
batches) uses it through ``shared.member_batches`` without SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import Any


def jsonable(value: Any) -> Any:
    """A database value as a JSON value (timestamps in ISO 8601, decimals as numbers, a JSON column's value as it
    is). A decimal NaN or infinity is null, as the records write it on both paths (PostgreSQL's own JSON would be
    the strings ``"NaN"`` and ``"Infinity"``; a float's NaN is null there too)."""
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def finite_jsonable(value: Any) -> Any:
    """:func:`jsonable`, with a float NaN or infinity as null: what orjson writes, where the standard library (the
    writer of what orjson refuses, integers beyond 64 bits) would write ``NaN``, which is not JSON."""
    value = jsonable(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value
