"""Keyset paging over a saved query: pure SQL construction and value conversion."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass
from typing import Any

from shared.domain.query_parameters import RESERVED_PREFIX

#: The extractor's own bind names; saved queries may not declare names with this prefix.
LAST_KEY = f"{RESERVED_PREFIX}last_key"
LIMIT = f"{RESERVED_PREFIX}limit"
SINCE = f"{RESERVED_PREFIX}since"
UNTIL = f"{RESERVED_PREFIX}until"


@dataclass(frozen=True)
class Window:
    """Incremental mode's slice: rows whose ``column`` is after ``since`` (None: from the start), up to ``until``."""

    column: str
    since: Any
    until: Any


def _window_conditions(quoted_column: str | None, window: Window | None) -> list[str]:
    if window is None or quoted_column is None:
        return []
    conditions = [f"q.{quoted_column} <= :{UNTIL}"]
    if window.since is not None:
        conditions.insert(0, f"q.{quoted_column} > :{SINCE}")
    return conditions


def keyset_page_sql(
    query_sql: str,
    quoted_key: str,
    *,
    first: bool,
    window: Window | None = None,
    quoted_watermark: str | None = None,
) -> str:
    """The SQL of one page: the saved query wrapped, filtered after the last key, ordered by key.

    Keyset (``WHERE key > :last_key``), never OFFSET: each page costs the same however deep the run is.
    Identifiers must already be quoted for the engine's dialect.
    """
    conditions = _window_conditions(quoted_watermark, window)
    if not first:
        conditions.append(f"q.{quoted_key} > :{LAST_KEY}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT * FROM ({query_sql}) AS q{where} ORDER BY q.{quoted_key} LIMIT :{LIMIT}"  # noqa: S608


def columns_sql(query_sql: str) -> str:
    """SQL returning no rows but the saved query's columns (discovery at save time)."""
    return f"SELECT * FROM ({query_sql}) AS q WHERE 1 = 0"  # noqa: S608


def high_watermark_sql(query_sql: str, quoted_watermark: str, *, since: bool) -> str:
    """SQL of the highest watermark value the query has now (after ``since`` when given)."""
    where = f" WHERE q.{quoted_watermark} > :{SINCE}" if since else ""
    return f"SELECT MAX(q.{quoted_watermark}) FROM ({query_sql}) AS q{where}"  # noqa: S608


def window_params(window: Window | None) -> dict[str, Any]:
    """The bind values of a window's conditions."""
    if window is None:
        return {}
    values = {UNTIL: window.until}
    if window.since is not None:
        values[SINCE] = window.since
    return values


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
