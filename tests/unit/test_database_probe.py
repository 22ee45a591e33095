"""The probe that ends a consumer loop's wait after a database outage: it answers only once the databases, seen away
since the wait began, answer again (never a hot loop on a database that answers), one check at a time off the loop's
thread; and the loop asks it for a database outage only."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import KafkaConnectionError

from devtools.processes import wait_until
from shared.catalog.engine import make_engine
from shared.database_probe import (
    UNANSWERED_IS_AWAY_SECONDS,
    Check,
    DatabaseAnswered,
    database_outage_probe,
    engine_check,
    on_a_thread,
)
from shared.health import Health
from shared.kafka.loop import ConsumerLoop, MetadataAnswered, wait_for_answer
from shared.outages import DependencyUnavailable
from tests.unit.test_interruption_wait import Clock, Cluster, Consumer, Stopping


class Checks:
    """Runs no check: each one submitted is a future the test settles (the probe's thread, simulated)."""

    def __init__(self) -> None:
        self.submitted: list[Future[None]] = []

    def __call__(self, check: Check) -> Future[None]:
        assert all(f.done() for f in self.submitted), "one check in flight at a time"
        self.submitted.append(Future())
        return self.submitted[-1]

    @property
    def last(self) -> Future[None]:
        return self.submitted[-1]


def test_databases_answering_from_the_first_check_on_never_end_the_wait():
    # A lock, a statement's own timeout: the database answers, and ending the wait early would handle the same
    # records again every pause instead of backing off.
    checks, clock = Checks(), Clock()
    probe = DatabaseAnswered([], submit=checks, clock=clock)
    assert len(checks.submitted) == 1, "a check starts as the wait begins"
    checks.last.set_result(None)
    stopping = Stopping(clock)
    assert wait_for_answer(30.0, probe, stopping, step=0.5, clock=clock) is False
    assert clock.now == pytest.approx(1030.0), "the whole backoff"
    assert len(checks.submitted) == 1, "no check made again: the database answered"
    assert probe.seen_away is False


def test_a_failed_check_is_made_again_and_the_next_answer_ends_the_wait():
    checks, clock = Checks(), Clock()
    probe = DatabaseAnswered([], submit=checks, clock=clock)
    assert probe() is False, "not answered yet"
    checks.last.set_exception(sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert probe() is False, "a failed check is no answer"
    assert probe.seen_away is True
    assert len(checks.submitted) == 2, "and another is made, read at the next pause"
    assert probe() is False
    checks.last.set_result(None)
    assert probe() is True
    assert len(checks.submitted) == 2, "nothing more made once answered"


def test_a_check_long_unanswered_is_the_database_away_and_its_answer_ends_the_wait():
    checks, clock = Checks(), Clock()
    probe = DatabaseAnswered([], submit=checks, clock=clock)
    clock.now += UNANSWERED_IS_AWAY_SECONDS / 2
    assert probe() is False
    assert probe.seen_away is False, "a database may take a moment to answer"
    clock.now += UNANSWERED_IS_AWAY_SECONDS / 2
    assert probe() is False
    assert probe.seen_away is True, "unanswered after a second: not there (a connect waiting on its timeout)"
    assert len(checks.submitted) == 1, "no second check while one is in flight"
    checks.last.set_result(None)
    assert probe() is True


def test_a_closed_probe_makes_no_more_checks():
    checks = Checks()
    probe = DatabaseAnswered([], submit=checks, clock=Clock())
    checks.last.set_exception(OSError("refused"))
    assert probe() is False
    assert len(checks.submitted) == 2
    probe.close()
    assert checks.last.cancelled(), "the check not started yet never runs"
    assert probe() is False
    assert len(checks.submitted) == 2


#: One pause of a wait: how the check in flight ends (or not) during it, and the seconds it lasts.
Pause = tuple[str, float]
pauses = st.lists(
    st.tuples(st.sampled_from(["answers", "fails", "silent"]), st.floats(min_value=0.05, max_value=2.0)), max_size=60
)


@given(script=pauses)
def test_the_probe_answers_only_once_the_databases_seen_away_answer_again(script: list[Pause]):
    checks, clock = Checks(), Clock()
    probe = DatabaseAnswered([], submit=checks, clock=clock)
    away = False  # what the test saw: a check failed, or one was in flight a second or more
    asked_at = clock.now
    for calls, (outcome, seconds) in enumerate(script, start=1):
        clock.now += seconds
        check = checks.last
        if not check.done():
            if outcome == "answers":
                check.set_result(None)
            elif outcome == "fails":
                check.set_exception(ConnectionRefusedError("refused"))
        failed = check.done() and check.exception() is not None
        long_unanswered = not check.done() and clock.now - asked_at >= UNANSWERED_IS_AWAY_SECONDS
        away = away or failed or long_unanswered
        answered = probe()
        assert answered == (away and check.done() and check.exception() is None)
        assert probe.seen_away == away
        assert len(checks.submitted) <= calls + 1, "a check a pause at most: no hot loop"
        if check is not checks.last:
            asked_at = clock.now  # a failed check made again
        if answered:
            break


class Recorded:
    """A check that records the thread it ran on and answers from a script."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.threads: list[threading.Thread] = []

    def __call__(self) -> None:
        self.threads.append(threading.current_thread())
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def test_checks_run_off_the_callers_thread_every_database_in_turn():
    catalog, store = Recorded(), Recorded(OSError("store away"))
    probe = DatabaseAnswered([catalog, store])
    wait_until(lambda: (probe(), probe.seen_away)[1], timeout=10, interval=0.01, what="the store seen away")
    wait_until(probe, timeout=10, interval=0.01, what="both databases answering")
    assert threading.current_thread() not in catalog.threads + store.threads
    assert len(catalog.threads) == 2, "checked again after the failure, then no more"
    assert len(store.threads) == 2


def test_a_thread_runs_the_check_and_settles_its_future():
    assert on_a_thread(lambda: None).result(timeout=10) is None
    failed = on_a_thread(Recorded(OSError("refused")))
    assert isinstance(failed.exception(timeout=10), OSError)


def test_the_sqlite_check_fails_while_another_connection_holds_the_database_locked(tmp_path: Path):
    path = tmp_path / "catalog.db"
    sqlite3.connect(path).close()
    check = engine_check(make_engine(f"sqlite:///{path}"))
    check()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            check()
        blocker.execute("ROLLBACK")
        check()
    finally:
        blocker.close()


def test_the_sqlite_check_never_creates_a_missing_database(tmp_path: Path):
    path = tmp_path / "gone" / "catalog.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with pytest.raises(sqlite3.OperationalError):
        engine_check(engine)()
    assert not path.exists()


def test_a_postgres_check_refused_fails_within_its_bound():
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(sa.exc.OperationalError):
        engine_check(engine)()


def _loop_probe(cause: BaseException, outage_probe: Any) -> object:
    loop = ConsumerLoop.__new__(ConsumerLoop)  # only what _probe reads
    loop.consumer = Consumer(Cluster())
    loop.service = "test"
    loop.outage_probe = outage_probe
    return loop._probe(cause)


@pytest.mark.parametrize(
    "cause",
    [
        sqlite3.OperationalError("database is locked"),
        DependencyUnavailable("the member store is away"),
        psycopg.OperationalError("connection failed: Connection refused"),  # no SQLSTATE: unreachable
    ],
    ids=["sqlite", "store", "refused"],
)
def test_a_database_outage_is_probed_through_the_services_databases(cause: BaseException, tmp_path: Path):
    outage_probe = database_outage_probe([sa.create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")])
    probe = _loop_probe(cause, outage_probe)
    assert isinstance(probe, DatabaseAnswered)
    probe.close()


def test_without_an_outage_probe_a_database_outage_waits_its_backoff_out():
    assert _loop_probe(DependencyUnavailable("away"), None) is None


def test_an_outage_probe_that_cannot_be_made_leaves_the_plain_backoff():
    def broken() -> DatabaseAnswered:
        raise RuntimeError("no engine")

    assert _loop_probe(DependencyUnavailable("away"), broken) is None


def test_a_broker_interruption_is_still_probed_through_the_consumers_metadata():
    def never() -> DatabaseAnswered:
        raise AssertionError("a database probe for a broker's interruption")

    assert isinstance(_loop_probe(KafkaConnectionError("socket disconnected"), never), MetadataAnswered)


class Closable:
    """A probe that records its questions and its close."""

    def __init__(self) -> None:
        self.asked = 0
        self.closed = False

    def __call__(self) -> bool:
        self.asked += 1
        return True

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("stopped", [False, True], ids=["answered", "stopping"])
def test_the_loop_closes_its_database_probe_once_the_wait_is_over(stopped: bool):
    made: list[Closable] = []
    loop = ConsumerLoop.__new__(ConsumerLoop)  # only what _wait_out reads
    loop.consumer = Consumer(Cluster())
    loop.service = "test"
    loop.health = Health(stall_seconds=float("inf"))
    loop.stopping = threading.Event()

    def outage_probe() -> Closable:
        made.append(Closable())
        return made[-1]

    loop.outage_probe = outage_probe
    if stopped:
        loop.stopping.set()
    loop._wait_out(DependencyUnavailable("the catalog is away"), interruptions=8)  # a 30 s backoff
    assert len(made) == 1
    assert made[0].asked == (0 if stopped else 1), "ended by its first answer, or at once by the stop"
    assert made[0].closed, "no check of the databases left to start after the wait"
