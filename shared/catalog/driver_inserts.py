"""Many rows inserted by the driver's own ``executemany``: the statement compiled once, each row's values
converted by its columns' bind processors only, none of SQLAlchemy's per-row statement work (which costs
more than the row itself for the delivery log's one row a batch outcome, written in the notifier's fold)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

#: The SQL, the parameters' names in order, their bind processors (None: the value as is), positional or named.
_Compiled = tuple[str, list[str], list[Any], bool]


class DriverInsert:
    """An INSERT of ``columns`` into ``table``, compiled per dialect on first use."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table, self.columns = table, list(columns)
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = insert(self.table).compile(dialect=dialect, column_keys=self.columns)
            names = list(compiled.positiontup or []) if dialect.positional else self.columns
            # The dialect's own type (SQLite's DATETIME writes the text SQLAlchemy reads back), not the generic one.
            processors = [self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
            found = self._compiled[dialect.name] = (compiled.string, names, processors, dialect.positional)
        return found

    def execute(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (each a value per column) in ``session``'s transaction."""
        if not rows:
            return
        connection = session.connection()
        sql, names, processors, positional = self._for(connection.dialect)
        converted = [
            [
                value if process is None else process(value)
                for value, process in zip((row[name] for name in names), processors, strict=True)
            ]
            for row in rows
        ]
        if positional:
            connection.exec_driver_sql(sql, [tuple(values) for values in converted])
        else:
            connection.exec_driver_sql(sql, [dict(zip(names, values, strict=True)) for values in converted])
