"""Members read by key: the saved query's rows whose key is one of some keys (refused members sent again).

Keys come as text (as batch outcomes name them, ``shared.member_keys``); they are bound as the key column's
own type, learnt from the query's first key (an integer, float, decimal, timestamp, date or UUID key column is
compared with values of its type, so its index serves, ``1042`` finds ``1042.00`` and ``50.0`` a ``real`` 50,
which PostgreSQL writes as ``50``), and as text compared with the key cast to text for any other type. Read in
bounded chunks.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, String, bindparam, cast, literal_column, or_, select

from shared.domain.catalog_objects import SavedQuery
from shared.domain.query_parameters import RESERVED_PREFIX
from shared.member_keys import row_key
from shared.querystore.member_json import PG_JSONB
from shared.querystore.paging import (
    Window,
    _window_conditions,
    saved_query,
    window_params,
)
from shared.querystore.reader import MemberReader, Page, QueryError, _DriverStatement, _window_key, key_value

#: Keys a statement binds at most (a chunk is padded with its last key: see :func:`_chunk_size`).
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
    statements = _Statements(reader, query, window)
    # The first key as the driver gives it (not as JSON: a decimal key must stay a decimal to be bound as one).
    sample = statements.get("sample", lambda q, key: select(key).select_from(q).limit(1))
    with reader._cursor(query) as cursor:
        sample.execute(cursor, dict(parameters or {}))
        first = cursor.fetchone()
        type_code = cursor.description[0][1]
    if first is None:
        return None
    if isinstance(first[0], decimal.Decimal) or type_code == PG_JSONB:
        ranges = _json_ranges if type_code == PG_JSONB else _numeric_ranges
        return _by_names(statements, keys, ranges, parameters=parameters, key_only=key_only)
    parse = _parser(first[0])
    typed: list[Any]
    if parse is not None:
        typed = sorted({value for value in map(parse, keys) if value is not None})
        as_text = False
    else:
        typed, as_text = sorted(set(keys)), not isinstance(first[0], str)
    if not typed:
        return None
    size = _chunk_size(len(typed))

    def condition(key: Any) -> ColumnElement[bool]:
        compared = cast(key, String) if as_text else key
        return compared.in_([bindparam(f"{_KEY}{i}") for i in range(size)])

    found = _ChunkedRead(statements, ("in", as_text, size), condition, key_only=key_only, parameters=parameters)
    for chunk in _chunks(typed, size):
        found.read(_bound(chunk))
    return found.page()


def _by_names(
    statements: _Statements,
    keys: Sequence[str],
    ranges_of: Callable[[str], Iterator[tuple[Any, Any]]],
    *,
    parameters: Mapping[str, Any] | None,
    key_only: bool,
) -> Page | None:
    """The members of a key whose name does not say its value exactly, by name: each name read as the ranges of keys
    that may have it (``ranges_of``: :func:`_numeric_ranges`, :func:`_json_ranges`, through the key's index), the rows
    read kept when they have that name. Several members may have one name: each is found."""
    named: dict[tuple[Any, Any], set[str]] = {}
    for name in keys:
        for bounds in ranges_of(name):
            named.setdefault(bounds, set()).add(name)
    if not named:
        return None
    ranges = sorted(named)
    size = _chunk_size(len(ranges))

    def condition(key: Any) -> ColumnElement[bool]:
        return or_(*[key.between(bindparam(f"{_KEY}{i}"), bindparam(f"{_KEY}{i}_to")) for i in range(size)])

    found = _ChunkedRead(statements, ("between", size), condition, key_only=key_only, parameters=parameters)
    for chunk in _chunks(ranges, size):
        values = _bound([low for low, _ in chunk]) | {f"{_KEY}{i}_to": high for i, (_, high) in enumerate(chunk)}
        # The chunk's own names: a numeric on the midpoint between two doubles is in two ranges, named by one.
        names = set().union(*(named[numerics] for numerics in chunk))
        found.read(values, names.__contains__, row_key)
    return found.page()


def _numeric_ranges(name: str) -> Iterator[tuple[decimal.Decimal, decimal.Decimal]]:
    """A ``numeric`` key's: a record writes a fraction as its nearest double, so a member is named by that double's
    text (``0.14285714285714285`` for 1/7 with 20 digits, ``1.0`` for 1.00000000000000000001); a whole number by its
    digits, read as exactly that number."""
    if (numerics := _numeric_range(name)) is not None:
        yield numerics


def _json_ranges(name: str) -> Iterator[tuple[str, str]]:
    """A ``jsonb`` key's, as JSON texts PostgreSQL reads as jsonb: a record names a member by Python's text of its
    key's JSON value (``{'a': 1}``, ``True``, ``s1`` for the string ``"s1"``, ``5`` for the number 5 and the string
    ``"5"``): the string it may be, and the value it may be the text of, a number as the range of numerics its double
    stands for (jsonb compares numbers as numerics). An object or array holding fractions: the range from the value
    with each fraction at its range's low end to the value with each at its high end (jsonb compares containers of one
    shape element by element, key by key: every value of that shape whose fractions have those doubles is in it)."""
    yield (text := json.dumps(name)), text
    if len(name) > _LITERAL_NAME_LIMIT:
        return
    try:
        value = ast.literal_eval(name)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (numerics := _numeric_range(name)) is not None:
            yield str(numerics[0]), str(numerics[1])
        return
    if value is None or isinstance(value, bool | dict | list):
        try:
            yield _json_bounds(value)
        except (TypeError, ValueError):
            return


def _json_bounds(value: Any) -> tuple[str, str]:
    """The JSON texts of ``value`` with each fraction (a float) at the low end of the numerics its double stands for,
    and at the high end (one text twice when it holds none). TypeError, ValueError: no JSON value has this name."""
    if isinstance(value, float):
        if (numerics := _numeric_range(repr(value))) is None:
            raise ValueError(f"{value} is no JSON number")
        return str(numerics[0]), str(numerics[1])
    if isinstance(value, list):
        items = [_json_bounds(item) for item in value]
        return f"[{', '.join(low for low, _ in items)}]", f"[{', '.join(high for _, high in items)}]"
    if isinstance(value, dict):
        if not all(isinstance(name, str) for name in value):
            raise TypeError("a JSON object's keys are strings")
        pairs = [(json.dumps(name), _json_bounds(item)) for name, item in value.items()]
        return (
            f"{{{', '.join(f'{name}: {low}' for name, (low, _) in pairs)}}}",
            f"{{{', '.join(f'{name}: {high}' for name, (_, high) in pairs)}}}",
        )
    if value is None or isinstance(value, str | int):  # bool is an int
        return (text := json.dumps(value)), text
    raise TypeError(f"{type(value).__name__} is no JSON value")


#: A jsonb key's name longer than this is only looked for as a string (reading it as a Python literal costs more).
_LITERAL_NAME_LIMIT = 10_000


def _numeric_range(name: str) -> tuple[decimal.Decimal, decimal.Decimal] | None:
    """The numerics a member named ``name`` may have: a whole number's digits are exactly it; a fraction is named
    by its nearest double, so every numeric between the midpoints to that double's neighbours (None: no numeric
    has this name)."""
    if name.removeprefix("-").isdigit():
        exact = decimal.Decimal(name)
        return exact, exact
    try:
        double = float(name)
    except ValueError:
        return None
    if not math.isfinite(double):
        return None
    with decimal.localcontext() as context:
        context.prec = 2_000  # a sum of two doubles, exactly (a subnormal's has some 750 digits)
        here = decimal.Decimal(double)
        below = (decimal.Decimal(math.nextafter(double, -math.inf)) + here) / 2
        above = (decimal.Decimal(math.nextafter(double, math.inf)) + here) / 2
    return below, above


def _chunk_size(values: int) -> int:
    """Values a statement binds for ``values`` values: the next power of two, at most :data:`CHUNK` (few statement
    shapes to compile and keep, a chunk padded to at most twice its values)."""
    return min(CHUNK, 1 << (values - 1).bit_length())


class _Statements:
    """The statements around one saved query (in a window, if given), compiled once for the reader's engine and kept
    in its cache of keyed statements: building and compiling a chunk's 500 ``BETWEEN``s cost more CPU than reading
    its rows (some 20 ms against 10 on PostgreSQL)."""

    def __init__(self, reader: MemberReader, query: SavedQuery, window: Window | None) -> None:
        self.reader, self.query, self.key_column, self.window = reader, query, query.key_column, window
        self.sql = reader._checked_sql(query)

    def get(self, shape: Hashable, build: Callable[[Any, Any], Select[Any]]) -> _DriverStatement:
        """The statement of ``shape`` (hashable, saying all ``build`` depends on but the query and the window),
        ``build(q, key)`` (the saved query as ``q``, its key column) compiled on a miss."""

        def compiled() -> _DriverStatement:
            q = saved_query(self.sql, self.key_column, *([self.window.column] if self.window else []))
            return _DriverStatement(self.reader.engine, build(q, q.c[self.key_column]))

        key = ("keyed", shape, self.sql, self.key_column, _window_key(self.window))
        statement: _DriverStatement = self.reader._keyed_statements.get(key, compiled)
        return statement


def _bound(chunk: Sequence[Any]) -> dict[str, Any]:
    return {f"{_KEY}{i}": value for i, value in enumerate(chunk)}


def _chunks(values: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """``values`` a chunk at a time, the last padded with its last value (one compiled statement)."""
    for start in range(0, len(values), size):
        chunk = list(values[start : start + size])
        yield chunk + [chunk[-1]] * (size - len(chunk))


class _ChunkedRead:
    """The query's rows (in the window, if given) matching a condition on bound values, in key order, read a
    chunk of values at a time."""

    def __init__(
        self,
        statements: _Statements,
        shape: Hashable,
        condition: Callable[[Any], ColumnElement[bool]],
        *,
        key_only: bool,
        parameters: Mapping[str, Any] | None,
    ) -> None:
        self._reader, self._query, window = statements.reader, statements.query, statements.window

        def build(q: Any, key: Any) -> Select[Any]:
            return (
                select(key if key_only else literal_column("*"))
                .select_from(q)
                .where(condition(key), *_window_conditions(q, window))
                .order_by(key)
            )

        self._statement = statements.get((shape, key_only), build)
        self._base = dict(parameters or {}) | window_params(window)
        self._columns: tuple[str, ...] = ()
        self._rows: list[Sequence[Any]] = []

    def read(
        self, values: Mapping[str, Any], keep: Callable[[Any], bool] | None = None, name: Callable[[Any], Any] = str
    ) -> None:
        """The rows matching with ``values`` bound; with ``keep``, only those whose key's ``name`` it keeps."""
        with self._reader._cursor(self._query) as cursor:
            self._statement.execute(cursor, self._base | dict(values))
            self._columns = tuple(d[0] for d in cursor.description)
            rows = cursor.fetchall()
        if keep is not None and rows:
            index = self._key_index()
            rows = [row for row in rows if keep(name(row[index]))]
        self._rows.extend(rows)

    def page(self) -> Page | None:
        """What was read, or None when nothing was."""
        if not self._rows:
            return None
        return Page(self._columns, self._rows, key_value(self._rows[-1][self._key_index()]))

    def _key_index(self) -> int:
        if self._query.key_column not in self._columns:
            raise QueryError(f"query '{self._query.name}' does not return its key column '{self._query.key_column}'")
        return self._columns.index(self._query.key_column)


def _parser(sample: Any) -> Callable[[str], Any] | None:
    """How a key's text becomes a value of the key column's type (None: compared as text)."""
    if isinstance(sample, bool):
        return {"True": True, "False": False}.get  # as a record's JSON true is named
    if isinstance(sample, bytes | memoryview):
        return _as(bytes.fromhex)  # a record writes bytes in hex
    if isinstance(sample, int):
        return _as(int)
    if isinstance(sample, float):
        return _as(float)
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
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return parsed
