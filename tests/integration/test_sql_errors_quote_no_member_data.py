"""A statement the database refuses (a member's key already there, a row missing a value) raises an error whose text
reaches a run's failure reason, dead letters, emails, log lines and the last line of a service that stops.
PostgreSQL's own words quote the data (``DETAIL:  Key (member_key)=(alice@example.com) already exists.``, ``Failing
row contains (...)``): what a reader is shown keeps the message, the constraint and the columns, never the values
(:mod:`shared.domain.database_details`). SQLite's words quote none (``UNIQUE constraint failed: table.column``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy import exc as sa_exc

from shared import log as shared_log
from shared.catalog.engine import make_engine
from shared.domain.masking import MASK
from tests.unit.test_catch_all_reasons import (
    PROFILE,
    TEMPLATE,
    Catalog,
    assert_logs_clean,
    dispatcher,
    handled,
    rendered_logs,
)

pytestmark = pytest.mark.integration

MEMBER_KEY = "alice.member-4711@example.com"
EMAIL = "bob.member-0815@example.org"


@pytest.fixture
def members(database_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    """A table of members (a unique key, an e-mail address that must be given) holding MEMBER_KEY."""
    engine = make_engine(database_url)
    metadata = sa.MetaData()
    table = sa.Table(
        "members_seen",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("member_key", sa.String(100), nullable=False, unique=True),
        sa.Column("email", sa.String(100), nullable=False),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert().values(id=1, member_key=MEMBER_KEY, email=EMAIL))
    try:
        yield engine, table
    finally:
        engine.dispose()


def _refused(engine: sa.Engine, statement: sa.Executable) -> sa_exc.IntegrityError:
    with pytest.raises(sa_exc.IntegrityError) as refused, engine.begin() as connection:
        connection.execute(statement)
    return refused.value


def _batch_failed_on(error: Exception) -> tuple[list[str], list[dict[str, Any]]]:
    """The reasons a batch's records carry (its dead letter, its outcome, its refused members: what a run's failure,
    an email and ``exportctl`` show) and the lines logged, when the dispatcher meets ``error``."""
    d = dispatcher(Catalog(TEMPLATE, PROFILE))

    def start_series(definition: str, profile: str) -> None:
        raise error

    d._start_series = start_series  # type: ignore[method-assign]
    reasons, lines = handled(d)
    return reasons, [dict(line) for line in lines]


def test_a_members_key_refused_twice_is_not_quoted_by_a_failure_reason_nor_a_log_line(
    members: tuple[sa.Engine, sa.Table],
):
    engine, table = members
    error = _refused(engine, table.insert().values(id=2, member_key=MEMBER_KEY, email="c@example.net"))
    postgresql = engine.dialect.name == "postgresql"
    # What the database said: PostgreSQL quotes the key; SQLite names the column only (nothing to mask there).
    assert (MEMBER_KEY in str(error)) is postgresql
    reasons, lines = _batch_failed_on(error)
    constraint = "members_seen_member_key_key" if postgresql else "UNIQUE constraint failed: members_seen.member_key"
    for reason in reasons:
        assert reason.startswith("the dispatcher could not handle the batch: IntegrityError: ")
        assert constraint in reason
        if postgresql:
            assert f"DETAIL:  Key (member_key)=({MASK}) already exists." in reason
    [failed] = [line for line in lines if line["event"] == "batch handling failed"]
    assert failed["error"] == reasons[0]
    # Any exception logged with its traceback (the admin API's 500, a periodic task's failure), as the services'
    # log renders it: the psycopg error's text and SQLAlchemy's, both quoting the key.
    with rendered_logs() as logged:
        try:
            raise error
        except sa_exc.IntegrityError:
            structlog.get_logger("t").exception("request failed")
    assert_logs_clean(lines + [dict(line) for line in logged], (MEMBER_KEY,))
    [traceback] = [line["exception"] for line in logged]
    assert constraint in traceback
    if postgresql:
        assert traceback.count(f"DETAIL:  Key (member_key)=({MASK}) already exists.") == 2


def test_a_row_refused_for_a_missing_value_is_not_quoted_when_a_service_stops_on_it(
    postgres_database_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """PostgreSQL quotes the whole row a not-null constraint refused; SQLite names the column only."""
    engine = make_engine(postgres_database_factory())
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            "members_seen",
            metadata,
            sa.Column("member_key", sa.String(100), primary_key=True),
            sa.Column("email", sa.String(100)),
            sa.Column("segment", sa.String(20), nullable=False),
        )
        metadata.create_all(engine)
        error = _refused(engine, table.insert().values(member_key=MEMBER_KEY, email=EMAIL))
    finally:
        engine.dispose()
    assert EMAIL in str(error)  # what the database said
    monkeypatch.setattr(shared_log, "_PROCESSORS", [])  # logging not configured: the traceback as Python writes it
    shared_log.report_escaped(error)
    shown = capsys.readouterr().err
    assert MEMBER_KEY not in shown
    assert EMAIL not in shown
    assert 'null value in column "segment" of relation "members_seen" violates not-null constraint' in shown
    assert f"DETAIL:  Failing row contains ({MASK})." in shown


def test_a_refused_key_holding_a_hint_line_shows_none_of_it(postgres_database_factory: Callable[[], str]):
    """PostgreSQL quotes a key as it is, line breaks too: a key holding a line starting ``HINT:`` once ended the
    DETAIL there, and its tail was shown as the server's hint (in the reason, the log line and the traceback)."""
    key = "carol.member-0042@example.com\nHINT:  tail-of-the-key-9931"
    engine = make_engine(postgres_database_factory())
    try:
        metadata = sa.MetaData()
        table = sa.Table("members_seen", metadata, sa.Column("member_key", sa.Text, primary_key=True))
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(table.insert().values(member_key=key))
        error = _refused(engine, table.insert().values(member_key=key))
    finally:
        engine.dispose()
    assert f"DETAIL:  Key (member_key)=({key}) already exists." in str(error)  # what the database said
    reasons, lines = _batch_failed_on(error)
    with rendered_logs() as logged:
        try:
            raise error
        except sa_exc.IntegrityError:
            structlog.get_logger("t").exception("request failed")
    assert_logs_clean(lines + [dict(line) for line in logged], ("tail-of-the-key-9931", "carol.member-0042"))
    for reason in reasons:
        assert "tail-of-the-key" not in reason
        assert f"DETAIL:  Key (member_key)=({MASK}) already exists." in reason
    [traceback] = [line["exception"] for line in logged]
    assert traceback.count(f"DETAIL:  Key (member_key)=({MASK}) already exists.") == 2
