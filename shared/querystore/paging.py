"""Keyset paging over a saved query: the statements built around it (a value's conversion to JSON is
:func:`shared.json_values.jsonable`, which needs no database client).

The saved query is one SQLAlchemy ``text()`` clause, the subquery ``q`` of statements built with
SQLAlchemy's constructs (never by pasting strings together): its ``:name`` parameters are bound, its
text is never edited, and it was checked by a SQL parser to be one self-contained, comment-free SELECT
(:func:`shared.domain.query_sql.check_select`) so that nothing in it can reach the statement around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    bindparam,
    column,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
)

from shared.domain.query_parameters import RESERVED_PREFIX
from shared.querystore.member_json import MemberJson, ResultColumn, last_key, member_json

#: The extractor's own bind names; saved queries may not declare names with this prefix.
LAST_KEY = f"{RESERVED_PREFIX}last_key"
LIMIT = f"{RESERVED_PREFIX}limit"
SINCE = f"{RESERVED_PREFIX}since"
UNTIL = f"{RESERVED_PREFIX}until"
UPPER = f"{RESERVED_PREFIX}upper"
OFFSET = f"{RESERVED_PREFIX}offset"


@dataclass(frozen=True)
class Window:
    """Incremental mode's slice: rows whose ``column`` is after ``since`` (None: from the start), up to ``until``."""

    column: str
    since: Any
    until: Any


def saved_query(query_sql: str, *columns: str) -> Subquery:
    """The saved query as the subquery ``q``, with the ``columns`` the statement around it refers to.

    Column names are quoted by the dialect where they need it. The text starts and ends on a line of its
    own: were a line comment ever to get past the parser, it could not reach the statement around it.
    """
    clause = text(f"\n{query_sql}\n").columns(*(column(name) for name in dict.fromkeys(columns)))
    return clause.subquery("q")


def _window_conditions(q: Subquery, window: Window | None) -> list[ColumnElement[bool]]:
    if window is None:
        return []
    watermark = q.c[window.column]
    if window.since is None:
        # The first run exports everyone: a member with no watermark too (a later run, after a since, never does).
        return [or_(watermark <= bindparam(UNTIL), watermark.is_(None))]
    return [watermark > bindparam(SINCE), watermark <= bindparam(UNTIL)]


def keyset_page(
    query_sql: str, key_column: str, *, first: bool, window: Window | None = None, bounded: bool = False
) -> Select[Any]:
    """One page: the saved query's rows after ``:_export_last_key`` (not on the first page), by key.

    Keyset (``WHERE key > :last_key``), never OFFSET: each page costs the same however deep the run is.
    ``bounded``: only keys up to ``:_export_upper`` (a key range of a run split across extractors).
    Bind ``LIMIT`` (and ``LAST_KEY``, ``UPPER`` and the window's values: :func:`window_params`) when executing.
    """
    q = saved_query(query_sql, key_column, *([window.column] if window else []))
    return _keyset(
        select(literal_column("*")).select_from(q), q, key_column, first=first, window=window, bounded=bounded
    )


def member_json_page(
    query_sql: str,
    key_column: str,
    columns: Sequence[ResultColumn],
    dialect: str,
    *,
    first: bool,
    window: Window | None = None,
    bounded: bool = False,
    sqlite_math: bool = True,
) -> tuple[Select[Any] | None, MemberJson]:
    """The page of :func:`keyset_page` as one row: its last key, its member count, and its members' JSON
    objects written by the database, in key order, joined by
    :data:`~shared.querystore.member_json.MEMBER_SEPARATOR` (bytes).

    None (and the reason in the :class:`MemberJson`) when the database cannot write these columns as
    the row path does: see :mod:`shared.querystore.member_json`.
    """
    names = [c.name for c in columns]
    q = saved_query(query_sql, key_column, *names, *([window.column] if window else []))
    member = member_json(dialect, q, key_column, columns, sqlite_math=sqlite_math)
    if member.member is None:
        return None, member
    source = q.join(member.lateral, true()) if member.lateral is not None else q
    page = _keyset(
        select(q.c[key_column].label("k"), member.member.label("m")).select_from(source),
        q,
        key_column,
        first=first,
        window=window,
        bounded=bounded,
    ).subquery("p")
    key_type = next(c.type_code for c in columns if c.name == key_column)
    last = last_key(dialect, page.c.k, key_type)
    # count(k) counts the keys that are not NULL: fewer than the page's members, and a key is NULL.
    return select(last, func.count(), member.joined(page.c.m, page.c.k), func.count(page.c.k)), member


def _keyset(
    statement: Select[Any], q: Subquery, key_column: str, *, first: bool, window: Window | None, bounded: bool = False
) -> Select[Any]:
    key = q.c[key_column]
    conditions = _window_conditions(q, window)
    if not first:
        conditions.append(key > bindparam(LAST_KEY))
    if bounded:
        conditions.append(key <= bindparam(UPPER))
    return statement.where(*conditions).order_by(key).limit(bindparam(LIMIT, type_=Integer))


def member_count(query_sql: str, key_column: str, window: Window | None = None) -> Select[Any]:
    """How many members the query has now (in the window): to split a large run into key ranges."""
    q = saved_query(query_sql, key_column, *([window.column] if window else []))
    return select(func.count()).select_from(q).where(*_window_conditions(q, window))


def key_page(
    query_sql: str, key_column: str, *, first: bool, window: Window | None = None, bounded: bool = False
) -> Select[Any]:
    """The keys of :func:`keyset_page`'s page, and nothing else (the database reads no other column where it can
    leave them out). Bind ``LIMIT`` (and ``LAST_KEY`` after the first page, ``UPPER`` when ``bounded``)."""
    q = saved_query(query_sql, key_column, *([window.column] if window else []))
    return _keyset(select(q.c[key_column]).select_from(q), q, key_column, first=first, window=window, bounded=bounded)


def key_after(
    query_sql: str, key_column: str, *, first: bool, window: Window | None = None, bounded: bool = False
) -> Select[Any]:
    """The key ``:_export_offset`` keys after ``:_export_last_key`` (after none on the ``first``), in key order:
    where a run's key ranges end, found one after the other (each key read once, no window function), and where
    a page ends, found ahead of reading it.

    Never a page's own statement: pages never use OFFSET. Bind ``LIMIT`` to 1.
    """
    return key_page(query_sql, key_column, first=first, window=window, bounded=bounded).offset(
        bindparam(OFFSET, type_=Integer)
    )


def null_key(query_sql: str, key_column: str, window: Window | None = None) -> Select[Any]:
    """A row when the query has a member (in the window) whose key is NULL: keyset paging never reaches it (no key is
    after a NULL, and a NULL after none), and PostgreSQL sorts it after every page but the first."""
    q = saved_query(query_sql, key_column, *([window.column] if window else []))
    conditions = [*_window_conditions(q, window), q.c[key_column].is_(None)]
    return select(literal_column("1")).select_from(q).where(*conditions).limit(1)


def columns_probe(query_sql: str) -> Select[Any]:
    """No rows but the saved query's columns (discovery at save time)."""
    return select(literal_column("*")).select_from(saved_query(query_sql)).where(false())


def high_watermark(query_sql: str, watermark_column: str, *, since: bool) -> Select[Any]:
    """The highest watermark value the query has now (after ``:_export_since`` when ``since``)."""
    q = saved_query(query_sql, watermark_column)
    watermark = q.c[watermark_column]
    statement = select(func.max(watermark)).select_from(q)
    return statement.where(watermark > bindparam(SINCE)) if since else statement


def window_params(window: Window | None) -> dict[str, Any]:
    """The bind values of a window's conditions."""
    if window is None:
        return {}
    values = {UNTIL: window.until}
    if window.since is not None:
        values[SINCE] = window.since
    return values
