"""Read a saved query's members from the query store, page by page, read-only, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from shared.catalog.engine import make_engine
from shared.domain.catalog_objects import SavedQuery
from shared.domain.query_sql import UnsafeSql, check_select
from shared.errors import PermanentError
from shared.querystore.paging import (
    LAST_KEY,
    LIMIT,
    SINCE,
    Window,
    columns_probe,
    high_watermark,
    jsonable,
    keyset_page,
    window_params,
)

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


class _DriverStatement:
    """A statement compiled once to the driver's SQL and parameters, executed on the raw DB-API cursor.

    SQLAlchemy's result rows cost about a fifth of a page's read time; the driver's tuples do not.
    """

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        assert isinstance(compiled, SQLCompiler), "a SELECT compiles with the SQL compiler"
        self.sql = compiled.string
        self._compiled = compiled
        self._positional = engine.dialect.positional

    def params(self, values: Mapping[str, Any]) -> Any:
        params = self._compiled.construct_params(dict(values)) or {}
        if self._positional:
            return tuple(params[name] for name in self._compiled.positiontup or [])
        return params


class MemberReader:
    """Pages through saved queries on one query store.

    ``timeout_seconds`` is the operator's limit on one query page: a saved query's own
    ``timeout_seconds`` can shorten it, never lengthen it. Every query's SQL is checked again, as the
    store's dialect reads it, before it runs (it may have been saved by an older release).
    """

    def __init__(self, engine: Engine, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self._parser_dialect = _PARSER_DIALECTS.get(engine.dialect.name)

    @classmethod
    def from_url(cls, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> MemberReader:
        """A reader of the query store at ``url`` (any SQLAlchemy URL)."""
        return cls(make_engine(url), timeout_seconds=timeout_seconds)

    def close(self) -> None:
        """Close the query store's connections."""
        self.engine.dispose()

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
        """Yield pages of ``page_size`` members after key ``after`` (from the start when None)."""
        sql = self._checked_sql(query)
        statements = {
            first: _DriverStatement(self.engine, keyset_page(sql, query.key_column, first=first, window=window))
            for first in (True, False)
        }
        base = dict(parameters or {}) | window_params(window) | {LIMIT: page_size}
        last_key = after
        while True:
            statement = statements[last_key is None]
            values = base if last_key is None else base | {LAST_KEY: last_key}
            with self._cursor(query) as cursor:
                cursor.execute(statement.sql, statement.params(values))
                columns = tuple(d[0] for d in cursor.description)
                rows = cursor.fetchall()
            if not rows:
                return
            if query.key_column not in columns:
                raise QueryError(f"query '{query.name}' does not return its key column '{query.key_column}'")
            last_key = jsonable(rows[-1][columns.index(query.key_column)])
            yield Page(columns, rows, last_key)
            if len(rows) < page_size:
                return

    def columns(self, query: SavedQuery, parameters: Mapping[str, Any] | None = None) -> list[str]:
        """The columns ``query`` returns (runs it for no rows); raises QueryError if it fails."""
        statement = _DriverStatement(self.engine, columns_probe(self._checked_sql(query)))
        values = {name: parameters.get(name) if parameters else None for name in query.parameters}
        with self._cursor(query) as cursor:
            cursor.execute(statement.sql, statement.params(values))
            return [d[0] for d in cursor.description]

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
        return jsonable(row[0]) if row else None

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
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise QueryError(f"query '{query.name}' failed: {reason}") from exc

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
