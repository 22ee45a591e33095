"""The wait after an interrupted poll: the backoff in pauses, ended early once a probe says the dependency answers
again, at once when the loop stops; and which interruption gets which probe."""

from __future__ import annotations

import math
import sqlite3
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import InvalidTimestampError, KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from shared.kafka.loop import (
    INTERRUPTION_PROBE_SECONDS,
    MAX_INTERRUPTION_BACKOFF_SECONDS,
    ConsumerLoop,
    MetadataAnswered,
    wait_for_answer,
)
from shared.outages import DependencyUnavailable


class Clock:
    """Simulated monotonic time, moved on by :class:`Stopping` waits only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stopping(threading.Event):
    """A stop event on simulated time: each wait moves the clock by its timeout, or to ``set_at`` and returns True."""

    def __init__(self, clock: Clock, set_at: float | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.set_at = set_at
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "every pause is bounded"
        assert timeout > 0, "every pause moves time on"
        self.pauses.append(timeout)
        if self.set_at is not None and self.clock.now + timeout >= self.set_at:
            self.clock.now = max(self.clock.now, self.set_at)
            return True
        self.clock.now += timeout
        return False


class Probe:
    """Answers from a script: True (answers), False (still away), or an exception to raise."""

    def __init__(self, script: list[bool | Exception]) -> None:
        self.script = list(script)
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        answer = self.script.pop(0) if self.script else False
        if isinstance(answer, Exception):
            raise answer
        return answer


answers = st.lists(st.one_of(st.booleans(), st.just(KafkaConnectionError("refused"))), max_size=80)


@given(
    delay=st.floats(min_value=0.0, max_value=MAX_INTERRUPTION_BACKOFF_SECONDS),
    step=st.floats(min_value=0.05, max_value=2.0),
    script=answers,
)
def test_the_wait_lasts_its_backoff_in_bounded_pauses_unless_a_probe_answers_first(
    delay: float, step: float, script: list[bool | Exception]
):
    clock = Clock()
    stopping, probe = Stopping(clock), Probe(script)
    start = clock.now
    ended_early = wait_for_answer(delay, probe, stopping, step=step, clock=clock)
    waited = clock.now - start
    assert all(pause <= step for pause in stopping.pauses), "no pause longer than a step"
    assert waited <= delay + 1e-9, "never longer than the backoff"
    assert probe.asked <= max(0, math.ceil(delay / step)), "asked once a pause at most (no hot loop)"
    assert probe.asked == len(stopping.pauses) - (0 if ended_early or not stopping.pauses else 1), (
        "asked after every pause but the last"
    )
    first_answer = next((i for i, answer in enumerate(script) if answer is True), None)
    if ended_early:
        # It ended at the first pause after which the probe said so (a probe that raised said "still away").
        assert first_answer is not None
        assert probe.asked == first_answer + 1
        assert waited == pytest.approx(sum(stopping.pauses))
    else:
        assert first_answer is None or first_answer >= probe.asked
        assert waited == pytest.approx(delay, abs=1e-6), "no answer: the whole backoff"


@given(
    delay=st.floats(min_value=0.1, max_value=MAX_INTERRUPTION_BACKOFF_SECONDS),
    stop_after=st.floats(min_value=0.0, max_value=MAX_INTERRUPTION_BACKOFF_SECONDS),
)
def test_a_stopping_loop_ends_its_wait_at_once_and_asks_no_probe_after(delay: float, stop_after: float):
    clock = Clock()
    stopping, probe = Stopping(clock, set_at=clock.now + stop_after), Probe([])
    start = clock.now
    assert wait_for_answer(delay, probe, stopping, step=INTERRUPTION_PROBE_SECONDS, clock=clock) is False
    assert clock.now - start <= min(delay, stop_after) + 1e-9, "the wait ends when the stop comes (SIGTERM)"
    assert probe.asked == len(stopping.pauses) - 1, "no probe asked after the stop"


def test_without_a_probe_the_backoff_runs_its_course():
    clock = Clock()
    stopping = Stopping(clock)
    assert wait_for_answer(3.0, None, stopping, step=0.5, clock=clock) is False
    assert clock.now == pytest.approx(1003.0)
    assert stopping.pauses == [0.5] * 6


def test_a_probe_that_raises_counts_as_still_away():
    clock = Clock()
    stopping = Stopping(clock)
    probe = Probe([RuntimeError("no metadata API"), KafkaTimeoutError("late"), True])
    assert wait_for_answer(30.0, probe, stopping, step=0.5, clock=clock) is True
    assert clock.now == pytest.approx(1001.5), "ended at the third pause, when it answered"


class Cluster:
    """kafka-python's ClusterMetadata as the probe uses it: each update asked for is a future the test settles."""

    def __init__(self) -> None:
        self.updates: list[Future] = []

    def request_update(self) -> Future:
        self.updates.append(Future())
        return self.updates[-1]


class Consumer:
    def __init__(self, cluster: Cluster) -> None:
        self._client = type("Client", (), {"cluster": cluster})()


def test_the_broker_probe_answers_once_the_clients_metadata_is_answered_and_asks_again_after_a_failure():
    cluster = Cluster()
    probe = MetadataAnswered(Consumer(cluster))
    assert len(cluster.updates) == 1, "an update is asked for as the wait begins"
    assert probe() is False, "not answered yet"
    cluster.updates[0].failure(KafkaConnectionError("111 ECONNREFUSED"))
    assert probe() is False, "a failed update is no answer"
    assert len(cluster.updates) == 2, "and another is asked for (the client paces its requests)"
    assert probe() is False
    cluster.updates[1].success(cluster)
    assert probe() is True
    assert len(cluster.updates) == 2, "nothing more asked once answered"


def test_a_broker_that_answers_from_the_first_update_on_never_ends_the_wait():
    # A produce the broker refuses, a handler's own timeout: the broker is there, and ending the wait early would
    # handle the same records again every pause instead of backing off.
    cluster = Cluster()
    probe = MetadataAnswered(Consumer(cluster))
    cluster.updates[0].success(cluster)
    assert probe() is False
    assert probe.seen_away is False
    clock = Clock()
    stopping = Stopping(clock)
    assert wait_for_answer(30.0, probe, stopping, step=0.5, clock=clock) is False
    assert clock.now == pytest.approx(1030.0), "the whole backoff"
    assert len(cluster.updates) == 1, "no update asked for again: the broker answered"


def test_an_update_long_unanswered_is_the_broker_away_and_its_answer_ends_the_wait():
    cluster = Cluster()
    clock = Clock()
    probe = MetadataAnswered(Consumer(cluster), clock=clock)
    clock.now += 0.5
    assert probe() is False
    assert probe.seen_away is False, "a broker may take a moment to answer"
    clock.now += 0.5
    assert probe() is False
    assert probe.seen_away is True, "unanswered after a second: not there"
    cluster.updates[0].success(cluster)
    assert probe() is True


def _loop_probe(cause: BaseException, consumer: Any) -> object:
    loop = ConsumerLoop.__new__(ConsumerLoop)  # only what _probe reads
    loop.consumer = consumer
    loop.service = "test"
    loop.outage_probe = None  # the loop of a service that gives no database probe
    return loop._probe(cause)


@pytest.mark.parametrize(
    "cause",
    [KafkaConnectionError("socket disconnected"), KafkaTimeoutError("Expiring 1 record(s)")],
    ids=["poll", "produce"],
)
def test_a_broker_interruption_is_probed_through_the_consumers_metadata(cause: BaseException):
    assert isinstance(_loop_probe(cause, Consumer(Cluster())), MetadataAnswered)


@pytest.mark.parametrize(
    "cause",
    [sqlite3.OperationalError("database is locked"), DependencyUnavailable("the member store is away")],
    ids=["sqlite", "store"],
)
def test_a_database_outage_waits_its_backoff_out(cause: BaseException):
    assert _loop_probe(cause, Consumer(Cluster())) is None


@pytest.mark.parametrize(
    "cause",
    [InvalidTimestampError("timestamp out of range"), MessageSizeTooLargeError("too large")],
    ids=["invalid-timestamp", "too-large"],
)
def test_an_error_the_broker_answers_waits_its_backoff_out(cause: BaseException):
    # Not retriable: the broker is there and refuses; asked again at once, it refuses again.
    assert _loop_probe(cause, Consumer(Cluster())) is None


def test_a_client_without_the_metadata_api_waits_its_backoff_out():
    assert _loop_probe(KafkaConnectionError("socket disconnected"), object()) is None
