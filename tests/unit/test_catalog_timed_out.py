"""A statement the catalog's database ends for a lock or statement timeout is told in one place, the catalog's
transaction: :class:`CatalogTimedOut` naming what was read or written, never the statement or its values; any
other database error passes through as it was (a deadlock is the definitions store's to retry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
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
