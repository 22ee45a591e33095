"""A statement that fails after start-up (a catalog write refused: a duplicate key, a value too long) raises an
error whose text reaches logs, a run's failure reason, an email and a 500 answer. SQLAlchemy's text quotes the
statement's bound values (``[parameters: (...)]``), among them a profile's secrets, a webhook URL, a member's values
or an SMTP password: every engine the project builds hides them; the statement and the database's words stay."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from shared.catalog.engine import make_engine

pytestmark = pytest.mark.integration

SECRET = "hunter2-7c41e9-smtp-password"


def _told(error: BaseException) -> str:
    """Everything a reader is shown of ``error``: its text and its traceback as a log line renders it."""
    return f"{error}\n{''.join(traceback.format_exception(error))}"


def _table(engine: sa.Engine) -> sa.Table:
    metadata = sa.MetaData()
    table = sa.Table(
        "secrets_kept",
        metadata,
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("secret", sa.String(40), nullable=False),
        sa.Column("short", sa.String(4)),
    )
    metadata.create_all(engine)
    return table


def test_a_refused_write_never_quotes_its_values(database_url: str):
    engine = make_engine(database_url)
    try:
        table = _table(engine)
        with engine.begin() as connection:
            connection.execute(table.insert().values(name="smtp", secret=SECRET))
        with pytest.raises(sa_exc.IntegrityError) as refused, engine.begin() as connection:
            connection.execute(table.insert().values(name="smtp", secret=SECRET))
        told = _told(refused.value)
        assert SECRET not in told
        assert "INSERT INTO secrets_kept" in told  # the statement is still named
        assert "SQL parameters hidden" in told
    finally:
        engine.dispose()


def test_a_refused_update_of_a_secret_never_quotes_it(database_url: str):
    engine = make_engine(database_url)
    try:
        table = _table(engine)
        with engine.begin() as connection:
            connection.execute(table.insert().values(name="a", secret="x"))
            connection.execute(table.insert().values(name="b", secret="y"))
        # Renaming 'b' to 'a' with a new secret: a duplicate key, the secret among the values.
        update = table.update().where(table.c.name == "b").values(name="a", secret=SECRET)
        with pytest.raises(sa_exc.IntegrityError) as refused, engine.begin() as connection:
            connection.execute(update)
        assert SECRET not in _told(refused.value)
    finally:
        engine.dispose()


def test_a_failing_statement_on_a_missing_table_never_quotes_its_values(database_url: str):
    engine = make_engine(database_url)
    try:
        with pytest.raises((sa_exc.OperationalError, sa_exc.ProgrammingError)) as failed, engine.connect() as c:
            c.execute(sa.text("INSERT INTO no_such_table (secret) VALUES (:secret)"), {"secret": SECRET})
        told = _told(failed.value)
        assert SECRET not in told
        assert "no_such_table" in told
    finally:
        engine.dispose()


def test_a_value_too_long_for_its_column_is_not_quoted(postgres_database_factory: Callable[[], str]):
    """PostgreSQL only: SQLite keeps a string of any length in a VARCHAR(4), so it has no such error to raise."""
    engine = make_engine(postgres_database_factory())
    try:
        table = _table(engine)
        with pytest.raises(sa_exc.DataError) as refused, engine.begin() as connection:
            connection.execute(table.insert().values(name="n", secret="s", short=SECRET))
        told = _told(refused.value)
        assert SECRET not in told
        assert "value too long" in told  # the database's words stay
    finally:
        engine.dispose()
