"""A statement the catalog's database ends for a lock or statement timeout is told in one place, the catalog's
transaction: :class:`CatalogTimedOut` naming what was read or written, never the statement or its values; any
other database error passes through as it was (a deadlock is the definitions store's to retry)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.catalog.database import TIMED_OUT, CatalogDatabase
from shared.errors import CatalogTimedOut, RetryableError


class _DriverError(Exception):
    """A driver's error with the SQLSTATE psycopg gives its errors."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"canceling statement (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate


def _ended(sqlstate: str) -> OperationalError:
    return OperationalError(
        "SELECT spec FROM catalog_objects WHERE name = %(name)s", {"name": "s3cr3t"}, _DriverError(sqlstate)
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[CatalogDatabase]:
    database = CatalogDatabase.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield database
    database.close()


@pytest.mark.parametrize("sqlstate", sorted(TIMED_OUT))
@pytest.mark.parametrize(
    ("kind", "name", "subject"),
    [("SavedQuery", "gold", "SavedQuery 'gold'"), ("AuditEntry", None, "AuditEntry"), (None, None, "the catalog")],
)
def test_a_timeout_is_catalog_timed_out_naming_what_was_read_and_no_statement(
    database: CatalogDatabase, sqlstate: str, kind: str | None, name: str | None, subject: str
):
    with pytest.raises(CatalogTimedOut) as told, database.transaction(kind, name):
        raise _ended(sqlstate)
    message = str(told.value)
    assert message.startswith(f"{subject}: the catalog database timed out (SQLSTATE {sqlstate}: ")
    assert "SELECT" not in message
    assert "s3cr3t" not in message
    assert isinstance(told.value, RetryableError)  # the services' consumer loop retries a one-by-one handler's
    assert (told.value.kind, told.value.name, told.value.sqlstate) == (kind, name, sqlstate)


@given(
    st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5).filter(
        lambda s: s not in TIMED_OUT
    )
)
def test_any_other_database_error_passes_through_unchanged(sqlstate: str):
    database = CatalogDatabase.from_url("sqlite://")
    error = _ended(sqlstate)
    with pytest.raises(DBAPIError) as raised, database.transaction("SavedQuery", "gold"):
        raise error
    assert raised.value is error
    database.close()


def _executed_then(connection: Connection, error: Exception, statement: str = "SELECT 1") -> None:
    connection.execute(text(statement))
    raise error


@pytest.mark.parametrize("sqlstate", sorted(TIMED_OUT))
@pytest.mark.parametrize("opened", ["begin", "connect"])
def test_a_timeout_on_a_core_connection_is_told_as_in_a_transaction(
    database: CatalogDatabase, sqlstate: str, opened: str
):
    """The stores' Core statements on a hot path (a checkpoint a page, the scheduler's tick) say the same."""
    with pytest.raises(CatalogTimedOut) as told, getattr(database, opened)("Schedule") as connection:
        _executed_then(connection, _ended(sqlstate))
    assert str(told.value).startswith(f"Schedule: the catalog database timed out (SQLSTATE {sqlstate}: ")
    assert "SELECT" not in str(told.value)
    assert "s3cr3t" not in str(told.value)


@pytest.mark.parametrize("opened", ["begin", "connect"])
def test_another_error_on_a_core_connection_passes_through_unchanged(database: CatalogDatabase, opened: str):
    error = _ended("40P01")
    with pytest.raises(DBAPIError) as raised, getattr(database, opened)() as connection:
        _executed_then(connection, error)
    assert raised.value is error


def test_a_core_transaction_commits_on_success_and_rolls_back_on_an_exception(database: CatalogDatabase):
    with database.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError), database.begin() as connection:
        _executed_then(connection, RuntimeError("undone"), "INSERT INTO t VALUES (2)")
    with database.connect() as connection:
        assert connection.execute(text("SELECT n FROM t")).scalars().all() == [1]


#: Files of the catalog that may use the engine directly: the database itself, and the schema's migrations (DDL
#: run by ``exportctl db upgrade`` and at start, before any store; not a store's read or write).
_ENGINE_USERS = {"database.py", "schema.py", "migrations/env.py"}


def test_no_store_opens_the_catalogs_engine_directly():
    """A store opening the engine itself would bypass the timeout mapping: its timeout would be the driver's
    error, quoting the statement (the extractor's checkpoint, the scheduler's tick once did)."""
    catalog = Path(__file__).resolve().parents[2] / "shared" / "catalog"
    direct = re.compile(r"\bengine\s*\.\s*(begin|connect|raw_connection)\s*\(")
    offending = [
        f"{path.relative_to(catalog).as_posix()}:{number}"
        for path in sorted(catalog.rglob("*.py"))
        if path.relative_to(catalog).as_posix() not in _ENGINE_USERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert offending == [], "use CatalogDatabase.transaction / begin / connect instead"
