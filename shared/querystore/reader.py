"""Read a saved query's members from the query store, page by page, read-only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from shared.catalog.engine import make_engine
from shared.domain.catalog_objects import SavedQuery
from shared.errors import PermanentError
from shared.querystore.paging import jsonable, keyset_page_sql


class QueryError(PermanentError):
    """The saved query failed or does not return its key column; the reason names what is wrong."""


@dataclass(frozen=True)
class Page:
    """One page of members, in key order; ``last_key`` is where the next page starts."""

    members: list[dict[str, Any]]
    last_key: Any


class MemberReader:
    """Pages through saved queries on one query store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> MemberReader:
        return cls(make_engine(url))

    def close(self) -> None:
        """Close the query store's connections."""
        self.engine.dispose()

    def pages(self, query: SavedQuery, *, page_size: int, after: Any = None) -> Iterator[Page]:
        """Yield pages of ``page_size`` members after key ``after`` (from the start when None)."""
        quoted_key = self.engine.dialect.identifier_preparer.quote(query.key_column)
        first_sql = text(keyset_page_sql(query.sql, quoted_key, first=True))
        next_sql = text(keyset_page_sql(query.sql, quoted_key, first=False))
        last_key = after
        while True:
            try:
                with self.engine.connect() as connection:
                    self._read_only(connection)
                    if last_key is None:
                        result = connection.execute(first_sql, {"limit": page_size})
                    else:
                        result = connection.execute(next_sql, {"limit": page_size, "last_key": last_key})
                    columns = list(result.keys())
                    rows = result.fetchall()
            except SQLAlchemyError as exc:
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                raise QueryError(f"query '{query.name}' failed: {reason}") from exc
            if not rows:
                return
            if query.key_column not in columns:
                raise QueryError(f"query '{query.name}' does not return its key column '{query.key_column}'")
            members = [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
            last_key = getattr(rows[-1], query.key_column)
            yield Page(members, jsonable(last_key))
            if len(rows) < page_size:
                return

    def _read_only(self, connection: Any) -> None:
        # Saved queries are validated as one SELECT; the engine enforces it too where it can.
        backend = self.engine.dialect.name
        if backend == "postgresql":
            connection.execute(text("SET TRANSACTION READ ONLY"))
        elif backend == "sqlite":
            connection.execute(text("PRAGMA query_only = ON"))
