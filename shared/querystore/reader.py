"""Read a saved query's members from the query store, page by page, read-only, with a deadline."""

from __future__ import annotations

import decimal
import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from shared.catalog.engine import make_engine
from shared.domain.catalog_objects import SavedQuery
from shared.domain.masking import Masking
from shared.domain.query_parameters import RESERVED_PREFIX
from shared.domain.query_sql import UnsafeSql, check_select
from shared.errors import PermanentError
from shared.json_values import jsonable
from shared.outages import is_outage
from shared.outbound.failure_reasons import masked_reason
from shared.querystore.member_json import (
    MEMBER_SEPARATOR,
    PG_JSONB,
    ROW_PATH_MARKER_JSON,
    MemberJson,
    ResultColumn,
)
from shared.querystore.paging import (
    LAST_KEY,
    LIMIT,
    OFFSET,
    SINCE,
    UPPER,
    Window,
    columns_probe,
    high_watermark,
    key_after,
    key_page,
    keyset_page,
    member_count,
    member_json_page,
    null_key,
    window_params,
)
from shared.querystore.statement_cache import StatementCache

_MARKER = ROW_PATH_MARKER_JSON
_SEPARATOR = MEMBER_SEPARATOR.encode()

#: Page queries a PostgreSQL member store runs at once for one run's pages written as JSON, each on a connection of
#: its own: the server writes the members' JSON (the run's critical path) on a second core when one is idle.
POSTGRESQL_PAGES_IN_FLIGHT = 2

#: Reading pages ahead stops for the rest of a run when finding where a page ends (a read of the saved query's keys
#: alone) takes longer than this share of reading a page, on average: a query whose keys cost about as much as its
#: members (the bench's ends take about a sixth). Judged from :data:`PAGE_ENDS_JUDGED_FROM` pages on, leaving out
#: the first :data:`PAGE_ENDS_WARM_UP` reads of each kind (they open the connections).
PAGE_ENDS_SHARE = 0.5
PAGE_ENDS_JUDGED_FROM = 8
PAGE_ENDS_WARM_UP = 2

#: The longest a query page may run when the reader is given no limit (the extractor's default); a saved
#: query's ``timeout_seconds`` can only shorten it.
DEFAULT_TIMEOUT_SECONDS = 300.0

#: SQLAlchemy's dialect names → the SQL parser's (sqlglot), to read saved queries as the member store does.
_PARSER_DIALECTS = {
    "postgresql": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mssql": "tsql",
    "oracle": "oracle",
}


class QueryError(PermanentError):
    """The saved query failed, timed out or does not return its key column; the reason says which."""


class QueryTimeout(QueryError):
    """The saved query ran longer than its timeout and was cancelled."""


def null_key_error(query: SavedQuery) -> QueryError:
    """The run's failure when a member's key is NULL: paging by key can neither reach it nor go on after it."""
    return QueryError(f"query '{query.name}' returned a member whose key '{query.key_column}' is NULL")


def unnamed_key_error(query: SavedQuery) -> QueryError:
    """The run's failure when a member's key is NaN or an infinity: its record writes it as null (JSON has neither),
    so nothing names the member (a refused one is not found again; NaN and both infinities would be one member)."""
    return QueryError(
        f"query '{query.name}' returned a member whose key '{query.key_column}' is NaN or an infinity, which its "
        "record cannot name (written as null)"
    )


class StoreUnavailable(QueryError):
    """The member store did not answer (connection refused or lost, the server shutting down): not the
    query's fault, and a later read may succeed."""


@dataclass(frozen=True)
class Page:
    """One page of members in key order, as the driver returned them; ``last_key`` is where the next starts."""

    columns: tuple[str, ...]
    rows: list[Sequence[Any]]
    last_key: Any

    @property
    def members(self) -> list[dict[str, Any]]:
        """The rows as column→JSON value mappings (convenient; the extractor encodes rows directly)."""
        return [{c: jsonable(v) for c, v in zip(self.columns, row, strict=True)} for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class JsonPage:
    """One page of members in key order, each one's JSON object as the database wrote it.

    It starts after key ``after`` (None: the first page); ``last_key`` is where the next page starts.
    """

    members: list[bytes]
    after: Any
    last_key: Any

    def __len__(self) -> int:
        return len(self.members)


class MemberPages(Iterator[Page | JsonPage]):
    """A run's pages: :class:`JsonPage` s when the database writes the members' JSON, else :class:`Page` s.

    ``json`` says which, ``reason`` why not (a column type, a setting). A JSON page holding a value the
    database cannot write exactly comes as a row :class:`Page` instead; :meth:`as_rows` reads a JSON
    page again as rows (to name a member, say).

    The pages are read ahead on a thread of their own: the database works on the next page while the
    caller encodes, sends and checkpoints this one (SQLite and the PostgreSQL driver's waits let go of
    the GIL); on PostgreSQL, JSON pages are read two at once (see :meth:`MemberReader.member_pages`).
    ``read_seconds`` is how long the caller's wait for the last page took (with one read at a time, its
    query's time); :meth:`close` stops reading.
    """

    def __init__(
        self,
        pages: Iterator[Page | JsonPage],
        *,
        json: bool,
        reason: str | None,
        as_rows: Callable[[JsonPage], Page | None] | None = None,
    ) -> None:
        self.json, self.reason = json, reason
        self._as_rows = as_rows
        self.read_seconds = 0.0
        self._ahead = _ReadAhead(pages)

    def __next__(self) -> Page | JsonPage:
        page, self.read_seconds = next(self._ahead)
        return page

    def as_rows(self, page: JsonPage) -> Page | None:
        """The same page (after the same key, as long) read as driver rows."""
        assert self._as_rows is not None, "JSON pages come with a way to read them as rows"
        return self._as_rows(page)

    def close(self) -> None:
        """Stop reading ahead: a page read under way is waited for (its connection checked back in), then
        dropped."""
        self._ahead.close()

    def __enter__(self) -> MemberPages:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _ReadAhead(Iterator[tuple[Page | JsonPage, float]]):
    """Runs a page iterator on a thread, one page ahead: (page, seconds its read took), or its exception."""

    def __init__(self, pages: Iterator[Page | JsonPage]) -> None:
        self._pages = pages
        self._queue: queue.Queue[tuple[str, Any, float]] = queue.Queue(maxsize=1)
        self._stopping = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None  # started by the first page asked for

    def _read(self) -> None:
        try:
            while not self._stopping.is_set():
                started = time.perf_counter()
                page = next(self._pages, None)
                if page is None:
                    self._put(("end", None, 0.0))
                    return
                self._put(("page", page, time.perf_counter() - started))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            self._put(("error", exc, 0.0))
        finally:
            # Stopped early: the pages' own reads under way (reads ahead) end before close() returns.
            close = getattr(self._pages, "close", None)
            if close is not None:
                close()

    def _put(self, item: tuple[str, Any, float]) -> None:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> tuple[Page | JsonPage, float]:
        if self._done:
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="member-pages", daemon=True)
            self._thread.start()
        kind, value, seconds = self._queue.get()
        if kind == "page":
            return value, seconds
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead, and wait for a page read under way (bounded by the query's timeout).

        Waiting matters: the read holds one of the engine's connections until it ends, and an engine
        disposed before it is checked back in would leave that connection to the garbage collector.
        """
        self._done = True
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


class _DriverStatement:
    """A statement compiled once to the driver's SQL and parameters, executed on the raw DB-API cursor.

    SQLAlchemy's result rows cost about a fifth of a page's read time; the driver's tuples do not.

    On PostgreSQL a float bound to one of the extractor's own names (a key or watermark read back from the store:
    the last key of a page, a range's upper key, a window's bounds, a member's key) goes as its text, of no type,
    which the server reads as the compared column's own type. Bound as a float it would be a ``double precision``:
    a ``real`` key read as 49.9 is then below the stored 49.900001525878906 (the next page repeated the member its
    page ended on), and a ``numeric`` key is cast to ``double precision`` (its index read from its start at every
    page rather than searched, its digits rounded).
    """

    def __init__(self, engine: Engine, statement: ClauseElement, *, binary: bool = False) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        assert isinstance(compiled, SQLCompiler), "a SELECT compiles with the SQL compiler"
        self.sql = compiled.string
        self._compiled = compiled
        self._positional = engine.dialect.positional
        self._floats_as_text = engine.dialect.name == "postgresql"
        #: psycopg: results in binary format (bytea as bytes as they are, no text decoding).
        self.binary = binary
        #: A row page's: the text of the key ``:_export_offset`` keys on (a jsonb key's exact JSON text).
        self.key_text: _DriverStatement | None = None

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> None:
        if self.binary:
            cursor.execute(self.sql, self.params(values), binary=True)
        else:
            cursor.execute(self.sql, self.params(values))

    def params(self, values: Mapping[str, Any]) -> Any:
        params = self._compiled.construct_params(dict(values)) or {}
        if self._floats_as_text:
            params = {name: _column_typed(name, value) for name, value in params.items()}
        if self._positional:
            return tuple(params[name] for name in self._compiled.positiontup or [])
        return params


#: Statements reading members by key a reader keeps (a few shapes per saved query: ``keyed_reads._chunk_size``).
KEYED_STATEMENTS = 16


class MemberReader:
    """Pages through saved queries on one query store.

    ``timeout_seconds`` is the operator's limit on one query page: a saved query's own
    ``timeout_seconds`` can shorten it, never lengthen it. Every query's SQL is checked again, as the
    store's dialect reads it, before it runs (it may have been saved by an older release).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        pages_in_flight: int | None = None,
    ) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        #: JSON page queries run at once for one run (None: :data:`POSTGRESQL_PAGES_IN_FLIGHT` on PostgreSQL,
        #: else 1). SQLite's pages are written in this process, on the cores the extractor uses itself.
        if pages_in_flight is not None and pages_in_flight < 1:
            raise ValueError(f"pages_in_flight must be 1 or more, not {pages_in_flight}")
        postgresql = engine.dialect.name == "postgresql"
        self.pages_in_flight = (pages_in_flight or POSTGRESQL_PAGES_IN_FLIGHT) if postgresql else 1
        self._parser_dialect = _PARSER_DIALECTS.get(engine.dialect.name)
        self._has_sqlite_math: bool | None = None
        #: The statements built around saved queries, compiled for this engine (see statement_cache).
        self._statements: StatementCache[Any] = StatementCache()
        #: Those reading members by key (``keyed_reads``), kept apart and fewer: one of 500 ``BETWEEN``s holds
        #: some 650 KiB, and would otherwise push the pages' statements out.
        self._keyed_statements: StatementCache[Any] = StatementCache(KEYED_STATEMENTS)

    @classmethod
    def from_url(
        cls, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, pages_in_flight: int | None = None
    ) -> MemberReader:
        """A reader of the query store at ``url`` (any SQLAlchemy URL)."""
        return cls(make_engine(url), timeout_seconds=timeout_seconds, pages_in_flight=pages_in_flight)

    def close(self) -> None:
        """Close the query store's connections."""
        self.engine.dispose()

    def _masking(self) -> Masking:
        """What a driver's error is masked with: the member store's password, and credential shapes (a URL's
        password, ``password=...``)."""
        password = self.engine.url.password
        return Masking.of([password] if password else [])

    def _checked_sql(self, query: SavedQuery) -> str:
        """The query's SQL once the store's dialect reads it as one safe SELECT binding only declared names."""
        try:
            checked = check_select(query.sql, self._parser_dialect)
        except UnsafeSql as exc:
            raise QueryError(f"query '{query.name}' is refused: sql {exc}") from None
        undeclared = [name for name in checked.bind_names if name not in query.parameters]
        if undeclared:
            raise QueryError(
                f"query '{query.name}' is refused: sql uses undeclared parameter(s) "
                + ", ".join(f":{name}" for name in undeclared)
            )
        return checked.sql

    def pages(
        self,
        query: SavedQuery,
        *,
        page_size: int,
        after: Any = None,
        parameters: Mapping[str, Any] | None = None,
        window: Window | None = None,
    ) -> Iterator[Page]:
        """Yield pages of ``page_size`` members after key ``after`` (from the start when None), as driver rows."""
        rows = self._row_statements(query, self._checked_sql(query), window)
        base = dict(parameters or {}) | window_params(window) | {LIMIT: page_size}
        last_key = after
        while True:
            page = self._row_page(query, rows[last_key is None], base, last_key)
            if page is None:
                return
            last_key = page.last_key
            yield page
            if len(page) < page_size:
                return

    def member_pages(
        self,
        query: SavedQuery,
        *,
        page_size: int,
        after: Any = None,
        until: Any = None,
        parameters: Mapping[str, Any] | None = None,
        window: Window | None = None,
        database_json: bool = True,
    ) -> MemberPages:
        """The pages of :meth:`pages`, each member's JSON written by the database where it can be.

        With ``database_json`` (and a query whose every column the database writes as the row path
        does: :mod:`shared.querystore.member_json`) the pages are :class:`JsonPage` s; a page holding a
        value the database cannot write exactly is read again as rows. Runs the query once for no rows
        first, to learn its columns. ``until``: only keys up to this one (a key range of a split run).
        """
        sql = self._checked_sql(query)
        bounded = until is not None
        rows = self._row_statements(query, sql, window, bounded)
        base = dict(parameters or {}) | window_params(window) | {LIMIT: page_size} | ({UPPER: until} if bounded else {})
        if not database_json:
            pages = self._keyed(query, sql, window, base, self._pages(query, rows, None, base, after, page_size))
            return MemberPages(pages, json=False, reason="turned off")
        columns = self._result_columns(query, sql, parameters)
        sqlite_math = self._sqlite_math()
        key = ("json", sql, query.key_column, tuple(columns), _window_key(window), bounded, sqlite_math)
        json_statements, member = self._statements.get(
            key, lambda: self._json_statements(query, sql, columns, window, bounded, sqlite_math)
        )
        if member.member is None:
            pages = self._keyed(query, sql, window, base, self._pages(query, rows, None, base, after, page_size))
            return MemberPages(pages, json=False, reason=member.reason)
        page_ends = self._page_ends(query, sql, window, bounded, base, page_size) if self.pages_in_flight > 1 else None
        pages = self._keyed(
            query,
            sql,
            window,
            base,
            self._pages(
                query, rows, json_statements, base, after, page_size, check_utf8=member.check_utf8, page_ends=page_ends
            ),
            first_key=after is None,
        )

        def as_rows(page: JsonPage) -> Page | None:
            return self._row_page(query, rows[page.after is None], base | {LIMIT: len(page)}, page.after)

        return MemberPages(pages, json=True, reason=None, as_rows=as_rows)

    def _keyed(
        self,
        query: SavedQuery,
        sql: str,
        window: Window | None,
        base: dict[str, Any],
        pages: Iterator[Page | JsonPage],
        *,
        first_key: bool = False,
    ) -> Iterator[Page | JsonPage]:
        """``pages``, once the query is found to have no member (in the window) whose key is NULL: else the run fails
        before its first page (PostgreSQL sorts NULLs after every page but the first, which would drop them).
        ``first_key``: JSON pages from the start, which name only their last key: the first is read, and one its
        record cannot name (a negative infinity, sorted first) fails the run too."""
        self._refuse_null_keys(query, sql, window, base)
        if first_key:
            statement: _DriverStatement = self._statements.get(
                ("first key", sql, query.key_column, _window_key(window)),
                lambda: _DriverStatement(self.engine, key_page(sql, query.key_column, first=True, window=window)),
            )
            with self._cursor(query) as cursor:
                statement.execute(cursor, base | {LIMIT: 1})
                row = cursor.fetchone()
            if row is not None:
                read_key(query, row[0], None)
        yield from pages

    def _refuse_null_keys(self, query: SavedQuery, sql: str, window: Window | None, values: dict[str, Any]) -> None:
        """Fail when the query has a member (in the window) whose key is NULL."""
        statement: _DriverStatement = self._statements.get(
            ("null key", sql, query.key_column, _window_key(window)),
            lambda: _DriverStatement(self.engine, null_key(sql, query.key_column, window)),
        )
        with self._cursor(query) as cursor:
            statement.execute(cursor, values)
            if cursor.fetchone() is not None:
                raise null_key_error(query)

    def _json_statements(
        self,
        query: SavedQuery,
        sql: str,
        columns: list[ResultColumn],
        window: Window | None,
        bounded: bool,
        sqlite_math: bool,
    ) -> tuple[dict[bool, _DriverStatement], MemberJson]:
        """The member-JSON page statements (first page, and after a key), compiled; none when the database cannot
        write these columns (the reason in the :class:`MemberJson`)."""
        built = {
            first: member_json_page(
                sql,
                query.key_column,
                columns,
                self.engine.dialect.name,
                first=first,
                window=window,
                bounded=bounded,
                sqlite_math=sqlite_math,
            )
            for first in (True, False)
        }
        member = built[True][1]
        if member.member is None:
            return {}, member
        statements = {
            first: _DriverStatement(self.engine, statement, binary=member.binary)
            for first, (statement, _) in built.items()
            if statement is not None
        }
        return statements, member

    def count(
        self, query: SavedQuery, *, parameters: Mapping[str, Any] | None = None, window: Window | None = None
    ) -> int:
        """How many members the query has now (in the window)."""
        statement = _DriverStatement(self.engine, member_count(self._checked_sql(query), query.key_column, window))
        with self._cursor(query) as cursor:
            statement.execute(cursor, dict(parameters or {}) | window_params(window))
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def key_pages(
        self, query: SavedQuery, *, page_size: int, parameters: Mapping[str, Any] | None = None
    ) -> Iterator[list[Any]]:
        """The query's keys in key order, ``page_size`` a page, as the driver returns them: the key column alone
        (a pass over who the query selects, far cheaper than its members' values)."""
        sql = self._checked_sql(query)
        statements = {
            first: _DriverStatement(self.engine, key_page(sql, query.key_column, first=first))
            for first in (True, False)
        }
        base = dict(parameters or {}) | {LIMIT: page_size}
        self._refuse_null_keys(query, sql, None, base)
        last_key = None
        while True:
            with self._cursor(query) as cursor:
                statements[last_key is None].execute(cursor, self._values(base, last_key))
                keys = [row[0] for row in cursor.fetchall()]
                type_code = cursor.description[0][1]
            if not keys:
                return
            read_key(query, keys[0], type_code)  # NULLs, NaN and infinities sort first or last
            last = read_key(query, keys[-1], type_code)
            yield keys
            if len(keys) < page_size:
                return
            last_key = last

    def key_boundaries(
        self,
        query: SavedQuery,
        ranks: Sequence[int],
        *,
        parameters: Mapping[str, Any] | None = None,
        window: Window | None = None,
    ) -> list[Any]:
        """The keys at ``ranks`` (1 = the first, increasing) in key order, as JSON values (fewer if the query has
        fewer rows): each found from the previous one, so the keys are read once in all."""
        sql = self._checked_sql(query)
        statements = {
            first: _DriverStatement(self.engine, key_after(sql, query.key_column, first=first, window=window))
            for first in (True, False)
        }
        base = dict(parameters or {}) | window_params(window) | {LIMIT: 1}
        self._refuse_null_keys(query, sql, window, base)  # PostgreSQL sorts them after the last boundary's key
        keys: list[Any] = []
        previous_rank, last_key = 0, None
        for rank in ranks:
            values = base | {OFFSET: rank - previous_rank - 1}
            with self._cursor(query) as cursor:
                statements[last_key is None].execute(
                    cursor, values if last_key is None else values | {LAST_KEY: last_key}
                )
                row = cursor.fetchone()
                type_code = cursor.description[0][1]
            if row is None:
                break
            last_key, previous_rank = read_key(query, row[0], type_code), rank
            keys.append(last_key)
        return keys

    def _row_statements(
        self, query: SavedQuery, sql: str, window: Window | None, bounded: bool = False
    ) -> dict[bool, _DriverStatement]:
        def build() -> dict[bool, _DriverStatement]:
            statements = {}
            for first in (True, False):
                statement = _DriverStatement(
                    self.engine, keyset_page(sql, query.key_column, first=first, window=window, bounded=bounded)
                )
                keys = key_after(sql, query.key_column, first=first, window=window, bounded=bounded)
                as_text = keys.with_only_columns(cast(keys.selected_columns[0], Text))
                statement.key_text = _DriverStatement(self.engine, as_text)
                statements[first] = statement
            return statements

        statements: dict[bool, _DriverStatement] = self._statements.get(
            ("rows", sql, query.key_column, _window_key(window), bounded), build
        )
        return statements

    def _pages(
        self,
        query: SavedQuery,
        rows: dict[bool, _DriverStatement],
        members: dict[bool, _DriverStatement] | None,
        base: dict[str, Any],
        after: Any,
        page_size: int,
        *,
        check_utf8: bool = False,
        page_ends: Callable[[Any], Any] | None = None,
    ) -> Iterator[Page | JsonPage]:
        def read(last_key: Any) -> Page | JsonPage | None:
            page: Page | JsonPage | None = None
            if members is not None:
                page = self._json_page(query, members[last_key is None], base, last_key, check_utf8)
            if page is None:
                page = self._row_page(query, rows[last_key is None], base, last_key)
            return page

        if page_ends is not None:
            yield from self._pages_in_flight(read, page_ends, after, page_size)
            return
        last_key = after
        while True:
            page = read(last_key)
            if page is None or not len(page):
                return
            last_key = page.last_key
            yield page
            if len(page) < page_size:
                return

    def _pages_in_flight(
        self,
        read: Callable[[Any], Page | JsonPage | None],
        page_ends: Callable[[Any], Any],
        after: Any,
        page_size: int,
    ) -> Iterator[Page | JsonPage]:
        """The pages :meth:`_pages` reads one after the other, up to :attr:`pages_in_flight` of them read at once.

        A page's read starts once the previous page's end is known: ``page_ends`` finds it (the key
        ``page_size`` keys on, a read of the saved query's keys alone) while the previous page is being read.
        A page that does not end on the key found for it (members added or removed since) drops the reads
        ahead of it and paging goes on after its own last key, so the pages are those read one after the
        other. Once finding the ends costs more than :data:`PAGE_ENDS_SHARE` of reading the pages, the rest
        are read one at a time.
        """

        def timed(last_key: Any) -> tuple[Page | JsonPage | None, float]:
            started = time.perf_counter()
            page = read(last_key)
            return page, time.perf_counter() - started

        ahead, ends, pages = True, _Seconds(), _Seconds()
        reads: deque[tuple[Any, Future[tuple[Page | JsonPage | None, float]]]] = deque()
        known, start = True, after  # whether the next read's start is known, and that start
        with ThreadPoolExecutor(self.pages_in_flight, thread_name_prefix="member-page") as pool:
            try:
                while True:
                    while known and len(reads) < (self.pages_in_flight if ahead else 1):
                        reads.append((start, pool.submit(timed, start)))
                        known = False
                        if ahead:
                            started = time.perf_counter()
                            end = page_ends(start)
                            ends.add(time.perf_counter() - started)
                            known, start = end is not None, end
                    page, seconds = reads.popleft()[1].result()
                    pages.add(seconds)
                    if page is None or not len(page):
                        return
                    yield page
                    if len(page) < page_size:
                        return
                    if ahead and pages.count >= PAGE_ENDS_JUDGED_FROM and ends.mean > PAGE_ENDS_SHARE * pages.mean:
                        ahead = False
                    following = reads[0][0] if reads else start
                    if not (reads or known) or following != page.last_key:
                        for _, dropped in reads:
                            dropped.cancel()
                        reads.clear()
                        known, start = True, page.last_key
            finally:
                for _, dropped in reads:
                    dropped.cancel()  # a read under way ends before the pool's threads do

    def _page_ends(
        self, query: SavedQuery, sql: str, window: Window | None, bounded: bool, base: dict[str, Any], page_size: int
    ) -> Callable[[Any], Any]:
        """Where the page after a key ends (the key ``page_size`` keys on), or None: fewer keys left, or the read
        failed (the page's own read then fails as it always did)."""
        statements: dict[bool, _DriverStatement] = self._statements.get(
            ("ends", sql, query.key_column, _window_key(window), bounded),
            lambda: {
                # Binary, as the JSON page's last key is read: a `real` key read as text (49.9) never equals the
                # page's (49.900001525878906), and every page read ahead would be dropped and read again.
                first: _DriverStatement(
                    self.engine,
                    key_after(sql, query.key_column, first=first, window=window, bounded=bounded),
                    binary=True,
                )
                for first in (True, False)
            },
        )
        values = base | {LIMIT: 1, OFFSET: page_size - 1}

        def page_end(after: Any) -> Any:
            try:
                with self._cursor(query) as cursor:
                    statements[after is None].execute(cursor, self._values(values, after))
                    row = cursor.fetchone()
                    type_code = cursor.description[0][1]
                # A key its record cannot name: its page's own read fails the run.
                return None if row is None else read_key(query, row[0], type_code)
            except QueryError:
                return None

        return page_end

    def _values(self, base: dict[str, Any], last_key: Any) -> dict[str, Any]:
        return base if last_key is None else base | {LAST_KEY: last_key}

    def _row_page(
        self, query: SavedQuery, statement: _DriverStatement, base: dict[str, Any], last_key: Any
    ) -> Page | None:
        """The page after ``last_key`` as driver rows, or None when there is none."""
        with self._cursor(query) as cursor:
            statement.execute(cursor, self._values(base, last_key))
            columns = tuple(d[0] for d in cursor.description)
            rows = cursor.fetchall()
            type_codes = [d[1] for d in cursor.description]
        if not rows:
            return None
        if query.key_column not in columns:
            raise QueryError(f"query '{query.name}' does not return its key column '{query.key_column}'")
        at = columns.index(query.key_column)
        read_key(query, rows[0][at], type_codes[at])  # NULLs, NaN and infinities sort first or last
        last = rows[-1][at]
        page_last = read_key(query, last, type_codes[at])
        if type_codes[at] == PG_JSONB and statement.key_text is not None and _holds_float(last):
            page_last = self._jsonb_key_text(query, statement.key_text, base, last_key, page_last, last, len(rows))
        if isinstance(last, bytes) and self.engine.dialect.name != "postgresql":
            # Read back as text, which SQLite sorts before every blob: the next page would be this one again.
            raise QueryError(
                f"query '{query.name}': its key column '{query.key_column}' holds blobs, which the "
                "extractor cannot page by on SQLite (use a key of another type)"
            )
        return Page(columns, rows, page_last)

    def _jsonb_key_text(
        self,
        query: SavedQuery,
        statement: _DriverStatement,
        base: dict[str, Any],
        after: Any,
        read: str,
        last: Any,
        count: int,
    ) -> Any:
        """The last jsonb key of a row page (read after ``after``, ``count`` rows) holding a number the driver read as
        a float, as its exact JSON text: the float's text (``read``) is below a number of more digits, and the next
        page would start on it again. ``read`` when the key found is not the page's last (members changed between)."""
        with self._cursor(query) as cursor:
            statement.execute(cursor, self._values(base | {LIMIT: 1, OFFSET: count - 1}, after))
            row = cursor.fetchone()
        return row[0] if row is not None and json.loads(row[0]) == last else read

    def _json_page(
        self, query: SavedQuery, statement: _DriverStatement, base: dict[str, Any], last_key: Any, check_utf8: bool
    ) -> JsonPage | None:
        """The page after ``last_key`` as members' JSON; None when it must be read as rows instead."""
        try:
            with self._cursor(query) as cursor:
                statement.execute(cursor, self._values(base, last_key))
                page_last_key, count, joined, keyed = cursor.fetchone()
        except (QueryTimeout, StoreUnavailable):
            raise
        except QueryError:
            # The rows say what is wrong (the same error) or hold what the JSON could not (a SQLite blob).
            return None
        if not count:
            return JsonPage([], last_key, last_key)
        if keyed != count:
            raise null_key_error(query)
        if _not_finite(page_last_key):  # NaN and infinity sort last (a negative infinity first: see _keyed)
            raise unnamed_key_error(query)
        if _MARKER in joined:
            return None
        if check_utf8:
            try:
                joined.decode()
            except UnicodeDecodeError:
                return None  # the row path fails with the driver's own message, as it always did
        members = joined.split(_SEPARATOR)
        if len(members) != count:
            return None  # not one object a member: never seen, but rows are always right
        return JsonPage(members, last_key, key_value(page_last_key))

    def _result_columns(self, query: SavedQuery, sql: str, parameters: Mapping[str, Any] | None) -> list[ResultColumn]:
        """The query's columns and the driver's type codes (runs it for no rows)."""
        statement = self._statements.get(("probe", sql), lambda: _DriverStatement(self.engine, columns_probe(sql)))
        values = {name: (parameters or {}).get(name) for name in query.parameters}
        with self._cursor(query) as cursor:
            statement.execute(cursor, values)
            return [ResultColumn(d[0], d[1]) for d in cursor.description]

    def _sqlite_math(self) -> bool:
        """Whether SQLite has its math functions (atan2 tells a negative zero apart); True elsewhere."""
        if self.engine.dialect.name != "sqlite":
            return True
        if self._has_sqlite_math is None:
            with self.engine.connect() as connection:
                try:
                    connection.exec_driver_sql("SELECT atan2(0.0, -1.0)")
                    self._has_sqlite_math = True
                except SQLAlchemyError:
                    self._has_sqlite_math = False
        return self._has_sqlite_math

    def columns(self, query: SavedQuery, parameters: Mapping[str, Any] | None = None) -> list[str]:
        """The columns ``query`` returns (runs it for no rows); raises QueryError if it fails."""
        return [column.name for column in self._result_columns(query, self._checked_sql(query), parameters)]

    def high_watermark(
        self, query: SavedQuery, column: str, *, since: Any, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """The highest value of ``column`` among the query's rows (after ``since``), or None if none."""
        statement = _DriverStatement(
            self.engine, high_watermark(self._checked_sql(query), column, since=since is not None)
        )
        values = dict(parameters or {}) | ({SINCE: since} if since is not None else {})
        with self._cursor(query) as cursor:
            cursor.execute(statement.sql, statement.params(values))
            row = cursor.fetchone()
        return key_value(row[0]) if row else None

    @contextmanager
    def _cursor(self, query: SavedQuery) -> Iterator[Any]:
        """A read-only driver cursor whose statements are cancelled after the query's timeout (capped)."""
        timeout = query.effective_timeout(self.timeout_seconds)
        started = time.monotonic()
        try:
            with self.engine.connect() as connection:
                with self._deadline(connection, timeout):
                    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    try:
                        yield cursor
                    finally:
                        cursor.close()
                connection.rollback()
        except (SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error) as exc:
            if time.monotonic() - started >= timeout:
                raise QueryTimeout(f"query '{query.name}' timed out after {timeout:g} s") from exc
            # A driver may quote its connection's parameters, the password too: masked, and cut.
            first_line = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            reason = masked_reason(self._masking, None, first_line)
            if is_outage(exc):
                raise StoreUnavailable(f"the member store is unreachable ({reason})") from exc
            raise QueryError(f"query '{query.name}' failed: {reason}") from exc
        except OverflowError as exc:  # sqlite3 binding an integer beyond 64 bits: the request's value, not the store
            raise QueryError(
                f"query '{query.name}' failed: a parameter is out of the member store's range ({exc})"
            ) from exc

    @contextmanager
    def _deadline(self, connection: Connection, seconds: float) -> Iterator[None]:
        # Read-only where the engine can enforce it (queries are validated as one SELECT too), and a
        # statement timeout: PostgreSQL cancels server-side; SQLite is interrupted from its VM loop.
        # PostgreSQL reads strings as the SQL parser that checked the query does (a server configured
        # with standard_conforming_strings off would read backslashes as escapes, and text the check
        # saw inside a string as SQL).
        backend = self.engine.dialect.name
        if backend == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")
            connection.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
            yield
        elif backend == "sqlite":
            raw = connection.connection.driver_connection
            deadline = time.monotonic() + seconds
            connection.exec_driver_sql("PRAGMA query_only = ON")
            raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)  # type: ignore[union-attr]
            try:
                yield
            finally:
                raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
                connection.exec_driver_sql("PRAGMA query_only = OFF")
        else:
            yield


def read_key(query: SavedQuery, raw: Any, type_code: Any) -> Any:
    """A key as the driver read it, as the next read binds it back (:func:`key_value`; a jsonb key as its JSON text,
    which PostgreSQL reads back as jsonb: a number or a string bound as it is was refused); the run's failure when
    its record cannot name it (NULL, NaN, an infinity)."""
    if raw is None:
        raise null_key_error(query)
    if _not_finite(raw):
        raise unnamed_key_error(query)
    if type_code == PG_JSONB:
        return json.dumps(raw)  # the driver's value (a JSON page's last key is read as its text already)
    return key_value(raw)


def _holds_float(value: Any) -> bool:
    """Whether a JSON value (as the driver read it) holds a number read as a float."""
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(map(_holds_float, value.values()))
    return isinstance(value, list) and any(map(_holds_float, value))


def _not_finite(value: Any) -> bool:
    if isinstance(value, decimal.Decimal):
        return not value.is_finite()
    return isinstance(value, float) and not math.isfinite(value)


class _Seconds:
    """The mean of durations, leaving out the first :data:`PAGE_ENDS_WARM_UP`; ``count`` counts them all."""

    def __init__(self) -> None:
        self.count, self._total = 0, 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        if self.count > PAGE_ENDS_WARM_UP:
            self._total += seconds

    @property
    def mean(self) -> float:
        return self._total / max(1, self.count - PAGE_ENDS_WARM_UP)


def key_value(value: Any) -> Any:
    """A key (or watermark) read from the store, as the JSON value a checkpoint keeps and the next page binds back
    (:func:`~shared.json_values.jsonable`), save a decimal a float would round (more than 15 to 17 digits) or cannot
    hold (NaN, an infinity, which ``jsonable`` writes as null): its exact text, which PostgreSQL reads back as the
    key column's ``numeric`` (a float gave a page after 1/7 with 20 digits starting at 1/7 again, or after the first
    of two keys a float cannot tell apart skipping the other; an infinity failed the run)."""
    if isinstance(value, decimal.Decimal) and not (value.is_finite() and value == value.to_integral_value()):
        rounded = float(value)
        return rounded if value.is_finite() and decimal.Decimal(repr(rounded)) == value else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value)  # a jsonb key: its JSON text, which PostgreSQL reads back as jsonb
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()  # a bytea key: its hex text, which PostgreSQL reads back as bytea
    return jsonable(value)


def _column_typed(name: str, value: Any) -> Any:
    """A PostgreSQL bind value: a float of the extractor's own (``_export_`` names: keys and watermarks read back
    from the store) as its shortest exact text, which the server reads as the type of the column it is compared
    with; anything else (a saved query's own parameters) as it is."""
    if isinstance(value, float) and name.startswith(RESERVED_PREFIX):
        return repr(value)
    return value


def _window_key(window: Window | None) -> tuple[str, bool] | None:
    """What of a window the statements around a query depend on: its column, and whether it has a lower bound (its
    values are bound when the statement runs)."""
    return None if window is None else (window.column, window.since is None)
