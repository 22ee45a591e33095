"""Telling an away dependency from a bad record: what is waited out, what is dead-lettered, what ends a process."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from devtools.processes import free_port
from shared.errors import PermanentError, RetryableError
from shared.kafka.loop import (
    INTERRUPTION_BACKOFF_SECONDS,
    MAX_INTERRUPTION_BACKOFF_SECONDS,
    interruption_backoff,
    is_fatal,
    is_interruption,
)
from shared.log import RepeatedLinesFilter
from shared.outages import DependencyUnavailable, describe, is_outage


def _error_of(engine: sa.Engine, sql: str) -> BaseException:
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.connect() as connection:
        connection.exec_driver_sql(sql)
    return caught.value


def test_a_postgresql_server_that_does_not_answer_is_an_outage():
    engine = sa.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x?connect_timeout=2")
    with pytest.raises(sa.exc.OperationalError) as caught:
        engine.connect()
    assert is_outage(caught.value)
    assert caught.value.orig is not None
    assert is_outage(caught.value.orig)


@contextmanager
def _locked_sqlite(path: Path) -> Iterator[tuple[sqlite3.Connection, sa.Engine]]:
    """A database with a table ``t`` that another connection (the first yielded) holds an exclusive lock on,
    and an engine that gives up waiting for it after 50 ms."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE t (x TEXT)")
    blocker.execute("BEGIN EXCLUSIVE")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        yield blocker, engine
    finally:
        blocker.close()
        engine.dispose()


def test_a_locked_sqlite_database_is_an_outage_but_a_wrong_statement_is_not(tmp_path):
    with _locked_sqlite(tmp_path / "catalog.db") as (blocker, engine):
        assert is_outage(_error_of(engine, "INSERT INTO t VALUES (1)"))
        blocker.execute("ROLLBACK")
        assert not is_outage(_error_of(engine, "SELECT * FROM no_such_table"))
        assert not is_outage(_error_of(engine, "SELEKT 1"))


def test_postgresql_errors_of_the_statement_are_not_outages():
    syntax = psycopg.errors.SyntaxError("syntax error at or near 'SELEKT'")
    assert not is_outage(syntax)
    assert not is_outage(psycopg.errors.UndefinedTable("relation does not exist"))


def test_an_outage_is_recognised_through_the_errors_raised_from_it():
    outer = RuntimeError("while folding")
    outer.__cause__ = DependencyUnavailable("catalog away")
    assert is_outage(outer)
    context = RuntimeError("during handling")
    context.__context__ = outer
    assert is_outage(context)
    assert not is_outage(RuntimeError("a bug of ours"))
    assert not is_outage(PermanentError("the partner refused"))
    assert not is_outage(RetryableError("a 503, retried by the dispatcher"))


@pytest.mark.parametrize(
    ("error", "interruption"),
    [
        (KafkaTimeoutError("no acknowledgement within the delivery timeout"), True),
        (KafkaConnectionError("connection refused"), True),
        (NotLeaderForPartitionError(), True),
        (DependencyUnavailable("member store away"), True),
        (MessageSizeTooLargeError("the record is too large"), False),
        (CommitFailedError("group moved on"), False),
        (ValueError("not JSON"), False),
        (TopicAuthorizationFailedError(), False),
    ],
)
def test_what_interrupts_a_poll_and_what_is_the_records_fault(error: Exception, interruption: bool):
    assert is_interruption(error) is interruption


@pytest.mark.parametrize(
    "error", [TopicAuthorizationFailedError(), GroupAuthorizationFailedError(), SaslAuthenticationFailedError()]
)
def test_a_refused_configuration_ends_the_process(error: Exception):
    assert is_fatal(error)


@pytest.mark.parametrize("error", [KafkaTimeoutError(), CommitFailedError(), KafkaConnectionError()])
def test_a_broker_away_or_a_moved_group_does_not_end_the_process(error: Exception):
    assert not is_fatal(error)


def test_the_backoff_starts_small_and_doubles():
    assert [interruption_backoff(n) for n in (1, 2, 3)] == [
        INTERRUPTION_BACKOFF_SECONDS,
        2 * INTERRUPTION_BACKOFF_SECONDS,
        4 * INTERRUPTION_BACKOFF_SECONDS,
    ]


@given(st.integers(min_value=-5, max_value=10**9))
def test_the_backoff_is_bounded_whatever_the_count(interruptions: int):
    wait = interruption_backoff(interruptions)
    assert INTERRUPTION_BACKOFF_SECONDS <= wait <= MAX_INTERRUPTION_BACKOFF_SECONDS
    assert interruption_backoff(interruptions + 1) >= wait


def _record(name: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, None)


def test_repeated_client_lines_are_held_back_and_counted():
    now = [0.0]
    lines = RepeatedLinesFilter(prefix="kafka", window_seconds=30, clock=lambda: now[0])
    assert lines.filter(_record("kafka.conn", "Connection lost"))
    assert not any(lines.filter(_record("kafka.conn", "Connection lost")) for _ in range(500))
    assert lines.filter(_record("kafka.conn", "Metadata refresh failed")), "another message has its own window"
    assert lines.filter(_record("services.dispatcher", "Connection lost")), "the services' own lines all pass"
    now[0] = 31.0
    later = _record("kafka.conn", "Connection lost")
    assert lines.filter(later)
    assert later.getMessage() == "Connection lost (500 similar lines held back in the last 30 s)"


def test_an_outage_is_described_without_its_statement_or_parameters(tmp_path):
    with (
        _locked_sqlite(tmp_path / "catalog.db") as (_, engine),
        pytest.raises(sa.exc.OperationalError) as caught,
        engine.begin() as connection,
    ):
        connection.exec_driver_sql("INSERT INTO t VALUES (?)", ("member@example.com",))
    assert describe(caught.value) == "OperationalError: database is locked"
