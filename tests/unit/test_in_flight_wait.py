"""While rounds are in flight and nothing is left to read, the consumer loop waits for a round to move on instead of
polling Kafka every few milliseconds (issue 18: a one-member run that fits one round was 7-16% slower with two rounds
in flight, its loop thread polling every 10 ms and taking the GIL from the round's HTTP requests).

What must hold all the same: a round done, or its outcomes acknowledged, is acted on at once; a record arriving
mid-round is still handed to the handler within the bound (:data:`~shared.kafka.loop.IN_FLIGHT_WAIT_MAX_MS`); a stop
while the loop waits ends it as soon as the round in flight gives up; an answer arriving as the loop looks before its
wait is not missed. The Kafka clients are the stand-ins of ``test_rounds_in_flight``; nothing waits on time but the
test's own deadlines.

The bounds hold on a loaded machine (two cores, two xdist workers): where a test tells "at once" from "at the wait's
end", the loop's waits are made :data:`LONG_WAIT_MS` long, and "at once" is under half of that (a loop that waits its
wait out fails by a second); a record mid-round is added as a wait begins, so a wait past the bound fails by seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from kafka.future import Future as KafkaFuture

from devtools.processes import wait_until
from shared.events import RunRequested
from shared.kafka import Outgoing
from shared.kafka import loop as loop_module
from shared.kafka.loop import IN_FLIGHT_WAIT_MAX_MS
from shared.outages import DependencyUnavailable
from tests.unit.test_rounds_in_flight import DEADLINE_SECONDS, P0, Consumer, Producer, _loop, _outcome

#: How long the lone round stays with the handler while the loop has nothing to read.
ROUND_SECONDS = 1.0
#: Every wait of the loop for a round to move on, where a test tells "at once" from "at the wait's end" (ms).
LONG_WAIT_MS = 2000
#: "At once": well under such a wait, with room for a loaded machine's thread wake-ups (seconds).
AT_ONCE_SECONDS = LONG_WAIT_MS / 1000 / 2
#: How often a test looks at the loop's progress (seconds): a small part of a wait.
TICK_SECONDS = 0.005


def _long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loop's every wait for a round in flight :data:`LONG_WAIT_MS` long (from the first)."""
    monkeypatch.setattr(loop_module, "IN_FLIGHT_POLL_MS", LONG_WAIT_MS)
    monkeypatch.setattr(loop_module, "IN_FLIGHT_WAIT_MAX_MS", LONG_WAIT_MS)


class CountingConsumer(Consumer):
    """A :class:`Consumer` that counts its polls, and notes when each commit was made; a poll with nothing to return
    takes its timeout, as kafka-python's does."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0
        self.committed_at: list[float] = []

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.polls += 1
        polled = super().poll(timeout_ms, max_records)
        if not polled and timeout_ms:
            time.sleep(timeout_ms / 1000)  # the client's own wait for records (none come)
        return polled

    def commit(self, offsets: dict[Any, Any]) -> None:
        super().commit(offsets)
        self.committed_at.append(time.monotonic())


class Acknowledgement(KafkaFuture):  # type: ignore[misc]
    """The broker's answer to one record as kafka-python gives it: callbacks once answered, and ``get``."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = threading.Event()
        self.add_both(lambda _: self.answered.set())

    def get(self, timeout: float | None = None) -> None:
        assert self.answered.wait(DEADLINE_SECONDS), "the broker never answered"
        if self.exception is not None:
            raise self.exception


class KafkaProducer(Producer):
    """A :class:`Producer` whose acknowledgements are kafka-python futures (callbacks on the broker's answer), as
    the real producer's are; answered once ``answer`` is set (a slow broker), or at once."""

    def __init__(self) -> None:
        super().__init__()
        self.unanswered: list[Acknowledgement] = []
        self.sent_at: list[float] = []
        self.lock = threading.Lock()

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> Acknowledgement:
        self.attempts += 1
        self.sent.append((topic, value))
        self.sent_at.append(time.monotonic())
        future = Acknowledgement()
        with self.lock:
            self.unanswered.append(future)
        return future

    def acknowledge(self) -> None:
        """The broker answers every record sent so far (on another thread, as the producer's I/O thread does)."""
        with self.lock:
            answered, self.unanswered = self.unanswered, []
        for future in answered:
            future.success(None)


def _run(loop: Any) -> threading.Thread:
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    return thread


def _stop(loop: Any, thread: threading.Thread, *gates: threading.Event) -> None:
    loop.stopping.set()
    for gate in gates:
        gate.set()
    thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()


def _lone_round(consumer: CountingConsumer, producer: KafkaProducer) -> tuple[Any, threading.Thread, threading.Event]:
    """A loop running with one round ("a") in flight, with the handler until ``finish`` is set; nothing else to read."""
    consumer.add(P0, "a")
    started, finish = threading.Event(), threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        started.set()
        assert finish.wait(DEADLINE_SECONDS)
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    thread = _run(loop)
    if not started.wait(DEADLINE_SECONDS):
        _stop(loop, thread, finish)
        raise AssertionError("the round never reached the handler")
    return loop, thread, finish


def test_a_lone_round_in_flight_with_nothing_to_read_costs_a_handful_of_polls_not_one_every_10_ms():
    consumer, producer = CountingConsumer(), KafkaProducer()
    loop, thread, finish = _lone_round(consumer, producer)
    try:
        before = consumer.polls
        time.sleep(ROUND_SECONDS)  # the round's own time (the handler at work), not a synchronisation
        polls = consumer.polls - before
        finish.set()
        # The round's outcome is produced as soon as the handler is done, and committed once the broker answers.
        wait_until(lambda: producer.outcomes() == ["a"], timeout=DEADLINE_SECONDS, what="the outcome produced")
        producer.acknowledge()
        wait_until(lambda: consumer.committed.get(P0) == 1, timeout=DEADLINE_SECONDS, what="the round committed")
    finally:
        _stop(loop, thread, finish)
    # Every 10 ms, a second would have been about 100 polls; waiting (up to IN_FLIGHT_WAIT_MAX_MS) for the round to
    # move on instead, a handful.
    assert polls <= 2 * ROUND_SECONDS * 1000 / IN_FLIGHT_WAIT_MAX_MS + 5, polls


def test_a_round_done_and_its_outcomes_acknowledged_are_acted_on_at_once_not_after_the_wait(monkeypatch):
    _long_waits(monkeypatch)
    consumer, producer = CountingConsumer(), KafkaProducer()
    loop, thread, finish = _lone_round(consumer, producer)
    try:
        # The poll after the round started found nothing: the loop waits (LONG_WAIT_MS) for the round to move on.
        wait_until(lambda: consumer.polls >= 2, timeout=DEADLINE_SECONDS, interval=TICK_SECONDS, what="a wait")
        handed = time.monotonic()
        finish.set()
        wait_until(
            lambda: producer.outcomes() == ["a"], timeout=DEADLINE_SECONDS, interval=TICK_SECONDS, what="the outcome"
        )
        produced = producer.sent_at[0] - handed
        # The outcome produced, the loop waits (LONG_WAIT_MS) for the broker's answer.
        answered = time.monotonic()
        producer.acknowledge()
        wait_until(lambda: consumer.committed.get(P0) == 1, timeout=DEADLINE_SECONDS, what="the round committed")
        committed = consumer.committed_at[0] - answered
    finally:
        _stop(loop, thread, finish)
    assert produced < AT_ONCE_SECONDS, produced  # woken by the round's end, not at the end of a wait
    assert committed < AT_ONCE_SECONDS, committed  # woken by the broker's answer


class AnsweredAsLooked(Acknowledgement):
    """An acknowledgement that the broker answers just as the loop, about to wait, first looks at it (``is_done``
    read on the loop thread inside ``loop._wait_for_rounds``, once ``race`` is set): the answer arrives between the
    loop's look and its wait, at the worst moment."""

    def __init__(self, race: threading.Event, looking: threading.Event) -> None:
        self._done = False
        self.race, self.looking = race, looking
        self.answered_at: float | None = None
        super().__init__()

    @property
    def is_done(self) -> bool:
        done = self._done
        if not done and self.race.is_set() and self.looking.is_set():
            self.race.clear()
            self.answered_at = time.monotonic()
            self.success(None)  # the producer's I/O thread, in the instant after this read
        return done

    @is_done.setter
    def is_done(self, done: bool) -> None:
        self._done = done


def test_an_answer_arriving_as_the_loop_looks_before_its_wait_is_acted_on_at_once(monkeypatch):
    _long_waits(monkeypatch)
    consumer, producer = CountingConsumer(), KafkaProducer()
    race, looking = threading.Event(), threading.Event()
    race.set()
    flights: list[AnsweredAsLooked] = []

    def send(topic: str, *, key: bytes, value: bytes, headers: Any = None) -> AnsweredAsLooked:
        producer.sent.append((topic, value))
        flights.append(AnsweredAsLooked(race, looking))
        return flights[-1]

    monkeypatch.setattr(producer, "send", send)
    consumer.add(P0, "a")
    loop = _loop(consumer, producer, lambda requests: [_outcome(request) for request in requests])
    wait_for_rounds = loop._wait_for_rounds

    def looking_while_waiting(window: Any) -> None:
        looking.set()
        try:
            wait_for_rounds(window)
        finally:
            looking.clear()

    monkeypatch.setattr(loop, "_wait_for_rounds", looking_while_waiting)
    thread = _run(loop)
    try:
        wait_until(lambda: consumer.committed.get(P0) == 1, timeout=DEADLINE_SECONDS, what="the round committed")
    finally:
        _stop(loop, thread)
    assert producer.outcomes() == ["a"]
    answered_at = flights[0].answered_at
    assert answered_at is not None, "the broker's answer never raced the loop's look"
    # Before, the answer was seen at the end of the wait (LONG_WAIT_MS): the loop had looked (not answered), then
    # asked to be called back for the records not answered yet, which by then were none.
    assert consumer.committed_at[0] - answered_at < AT_ONCE_SECONDS, consumer.committed_at[0] - answered_at


def test_a_record_arriving_mid_round_is_handed_to_the_handler_within_the_bound():
    consumer, producer = CountingConsumer(), Producer()
    consumer.add(P0, "a")
    started, finish, second = threading.Event(), threading.Event(), threading.Event()
    handed: list[float] = []
    arrived: list[float] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        if requests[0].definition == "a":
            started.set()
            assert finish.wait(DEADLINE_SECONDS)
        else:
            handed.append(time.monotonic())
            second.set()
        return [_outcome(request) for request in requests]

    def arrive(polled: dict[Any, list[Any]]) -> None:
        # Another run's record, while "a"'s round is still in flight, as the loop begins a wait (after a poll that
        # found nothing) once its waits are at their longest (10 polls: uncapped, this wait would be 2.56 s).
        if consumer.polls == 10 and not polled:
            arrived.append(time.monotonic())
            consumer.add(P0, "b")

    consumer.on_poll = arrive
    loop = _loop(consumer, producer, handle_round)
    thread = _run(loop)
    try:
        assert started.wait(DEADLINE_SECONDS)
        assert second.wait(DEADLINE_SECONDS)
    finally:
        _stop(loop, thread, finish)
    # The bound (a whole wait), and the margin a loaded machine's thread wake-ups need.
    assert handed[0] - arrived[0] < IN_FLIGHT_WAIT_MAX_MS / 1000 + 0.5, handed[0] - arrived[0]
    assert producer.outcomes() == ["a", "b"]


def test_a_stop_while_the_loop_waits_ends_it_as_soon_as_the_round_gives_up(monkeypatch):
    _long_waits(monkeypatch)
    consumer, producer = CountingConsumer(), KafkaProducer()
    consumer.add(P0, "a")
    started = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        started.set()
        # A handler that gives its round up when the service stops (the dispatcher's does): handed back.
        assert loop.stopping.wait(DEADLINE_SECONDS)
        return [DependencyUnavailable("the dispatcher is stopping") for _ in requests]

    loop = _loop(consumer, producer, handle_round)
    thread = _run(loop)
    try:
        assert started.wait(DEADLINE_SECONDS)
        # The poll after the round started found nothing: the loop waits (LONG_WAIT_MS) for the round to move on.
        wait_until(lambda: consumer.polls >= 2, timeout=DEADLINE_SECONDS, interval=TICK_SECONDS, what="a wait")
        asked = time.monotonic()
        loop.stopping.set()
        thread.join(DEADLINE_SECONDS)
        took = time.monotonic() - asked
    finally:
        _stop(loop, thread)
    assert took < AT_ONCE_SECONDS, took
    assert consumer.commits == []  # handed back: read again by the partition's next owner
