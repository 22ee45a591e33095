"""Members read by key: the saved query's rows whose key is one of some keys (refused members sent again).

Keys come as text (as batch outcomes name them); they are bound as the key column's own type, learnt
from the query's first key (an integer key column is compared with integers, so its index serves), and
as text compared with the key cast to text for any other type. Read in bounded chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, String, bindparam, cast, literal_column, select

from shared.domain.catalog_objects import SavedQuery
from shared.domain.query_parameters import RESERVED_PREFIX
from shared.querystore.paging import (
    Window,
    _window_conditions,
    jsonable,
    saved_query,
    window_params,
)
from shared.querystore.reader import MemberReader, Page, QueryError, _DriverStatement

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
) -> Page | None:
    """The query's current rows (in the window, if given) whose key is one of ``keys``, in key order; None
    when none is."""
    if not keys:
        return None
    sql = reader._checked_sql(query)
    first = reader.key_boundaries(query, [1], parameters=parameters)
    if not first:
        return None
    typed: list[Any]
    if isinstance(first[0], int) and not isinstance(first[0], bool):
        typed = sorted({int(key) for key in keys if _is_int(key)})
        as_text = False
    else:
        typed, as_text = sorted(set(keys)), not isinstance(first[0], str)
    if not typed:
        return None
    q = saved_query(sql, query.key_column, *([window.column] if window else []))
    key = q.c[query.key_column]
    compared = cast(key, String) if as_text else key
    size = min(CHUNK, len(typed))
    statement: Select[Any] = (
        select(literal_column("*"))
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
    return Page(columns, rows, jsonable(rows[-1][index]))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return str(int(text)) == text
