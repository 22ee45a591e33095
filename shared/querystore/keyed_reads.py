"""Members read by key: the saved query's rows whose key is one of some keys (refused members sent again).

Keys come as text (as batch outcomes name them, ``shared.member_keys``); they are bound as the key column's
own type, learnt from the query's first key (an integer, float, decimal, timestamp, date or UUID key column is
compared with values of its type, so its index serves, ``1042`` finds ``1042.00`` and ``50.0`` a ``real`` 50,
which PostgreSQL writes as ``50``), and as text compared with the key cast to text for any other type. Read in
bounded chunks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, String, bindparam, cast, literal_column, select

from shared.domain.catalog_objects import SavedQuery
from shared.domain.query_parameters import RESERVED_PREFIX
from shared.querystore.paging import (
    Window,
    _window_conditions,
    saved_query,
    window_params,
)
from shared.querystore.reader import MemberReader, Page, QueryError, _DriverStatement, key_value

#: Keys a statement binds at most (a last chunk is padded with its last key: one compiled statement).
CHUNK = 500
_KEY = f"{RESERVED_PREFIX}key_"


def members_by_keys(
    reader: MemberReader,
    query: SavedQuery,
    keys: Sequence[str],
    *,
    parameters: Mapping[str, Any] | None = None,
    window: Window | None = None,
    key_only: bool = False,
) -> Page | None:
    """The query's current rows (in the window, if given) whose key is one of ``keys``, in key order; None
    when none is. ``key_only``: only the key column (what a caller that only names the members needs)."""
    if not keys:
        return None
    sql = reader._checked_sql(query)
    q = saved_query(sql, query.key_column, *([window.column] if window else []))
    key = q.c[query.key_column]
    # The first key as the driver gives it (not as JSON: a decimal key must stay a decimal to be bound as one).
    sample = _DriverStatement(reader.engine, select(key).select_from(q).limit(1))
    with reader._cursor(query) as cursor:
        sample.execute(cursor, dict(parameters or {}))
        first = cursor.fetchone()
    if first is None:
        return None
    parse = _parser(first[0])
    typed: list[Any]
    if parse is not None:
        typed = sorted({value for value in map(parse, keys) if value is not None})
        as_text = False
    else:
        typed, as_text = sorted(set(keys)), not isinstance(first[0], str)
    if not typed:
        return None
    compared = cast(key, String) if as_text else key
    size = min(CHUNK, len(typed))
    statement: Select[Any] = (
        select(key if key_only else literal_column("*"))
        .select_from(q)
        .where(compared.in_([bindparam(f"{_KEY}{i}") for i in range(size)]), *_window_conditions(q, window))
        .order_by(key)
    )
    driver = _DriverStatement(reader.engine, statement)
    base = dict(parameters or {}) | window_params(window)
    columns: tuple[str, ...] = ()
    rows: list[Sequence[Any]] = []
    for start in range(0, len(typed), size):
        chunk = list(typed[start : start + size])
        chunk += [chunk[-1]] * (size - len(chunk))
        with reader._cursor(query) as cursor:
            driver.execute(cursor, base | {f"{_KEY}{i}": value for i, value in enumerate(chunk)})
            columns = tuple(d[0] for d in cursor.description)
            rows.extend(cursor.fetchall())
    if not rows:
        return None
    if query.key_column not in columns:
        raise QueryError(f"query '{query.name}' does not return its key column '{query.key_column}'")
    index = columns.index(query.key_column)
    return Page(columns, rows, key_value(rows[-1][index]))


def _parser(sample: Any) -> Callable[[str], Any] | None:
    """How a key's text becomes a value of the key column's type (None: compared as text)."""
    if isinstance(sample, bool):
        return None
    if isinstance(sample, int):
        return _as(int)
    if isinstance(sample, float):
        return _as(float)
    if isinstance(sample, decimal.Decimal):
        return _as(decimal.Decimal)
    if isinstance(sample, dt.datetime):
        return _as(dt.datetime.fromisoformat)
    if isinstance(sample, dt.date):
        return _as(dt.date.fromisoformat)
    if isinstance(sample, uuid.UUID):
        return _as(uuid.UUID)
    return None


def _as(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, None for a text it cannot read (a key no member of this type can have)."""

    def parsed(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, ArithmeticError):
            return None
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            return None
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return parsed
