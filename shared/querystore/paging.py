"""Keyset paging over a saved query: pure SQL construction and value conversion."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any


def keyset_page_sql(query_sql: str, quoted_key: str, *, first: bool) -> str:
    """The SQL of one page: the saved query wrapped, filtered after the last key, ordered by key.

    Keyset (``WHERE key > :last_key``), never OFFSET: each page costs the same however deep the run is.
    ``quoted_key`` must already be quoted for the engine's dialect.
    """
    where = "" if first else f" WHERE q.{quoted_key} > :last_key"
    return f"SELECT * FROM ({query_sql}) AS q{where} ORDER BY q.{quoted_key} LIMIT :limit"  # noqa: S608


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
