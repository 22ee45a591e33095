"""A database driver's value as a JSON value: one rule for every side that writes members (the query store's pages,
the member batches' encoding, the member fingerprints). No database client here: the application layer (a replay's
batches) uses it through ``shared.member_batches`` without SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any


def jsonable(value: Any) -> Any:
    """A database value as a JSON value (timestamps in ISO 8601, decimals as numbers)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)
