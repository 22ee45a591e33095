"""Rounds in flight (``ConsumerLoop(rounds_in_flight=2)``): the next round is polled while one is handled, and the
loop's guarantees hold across rounds in flight: outcomes produced and offsets committed in poll order, an outage
handing back its partition (a later round's records there included) while the other partitions' records settle,
held records not handed to the handler twice at once, no commit past a held record handed back (by a later round
in flight, or beside records settled), nothing committed of a partition revoked meanwhile, a handler's bad answer
dead-lettering its round rather than stalling the loop, and the bound: no more than two rounds' records in hand,
however slow the handler.

The Kafka clients are stand-ins that behave as the broker does where it matters here (positions, seeks, commits in
order, acknowledgements), with the records each poll may return under the test's control. Nothing waits on time:
each test waits for conditions with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from devtools.processes import wait_until
from shared.events import RunRequested
from shared.kafka import ConsumerLoop, Outgoing, value_decoder
from shared.kafka.held_records import HoldRecord
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable

TOPIC = "exports.run-requests"
OUTCOMES = "exports.run-events"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
DEADLINE_SECONDS = 30.0


class Acknowledgement:
    """The broker's answer to one record: given at once, or once ``answer`` is set."""

    def __init__(self, error: Exception | None, answer: threading.Event | None = None) -> None:
        self.error = error
        self.answer = answer

    @property
    def is_done(self) -> bool:
        return self.answer is None or self.answer.is_set()

    def get(self, timeout: float | None = None) -> None:
        if self.answer is not None:
            assert self.answer.wait(DEADLINE_SECONDS), "the broker never answered"
        if self.error is not None:
            raise self.error


class Producer:
    """Keeps the values produced, in order; ``refusing`` makes every acknowledgement fail (the broker away);
    ``answer`` (when given) holds every acknowledgement until it is set (a slow broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.attempts = 0
        self.refusing = False
        self.answer: threading.Event | None = None

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> Acknowledgement:
        self.attempts += 1
        if self.refusing:
            return Acknowledgement(KafkaTimeoutError("the broker is unreachable"), self.answer)
        self.sent.append((topic, value))
        return Acknowledgement(None, self.answer)

    def outcomes(self) -> list[str]:
        return [value.decode() for topic, value in self.sent if topic == OUTCOMES]

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class Consumer:
    """Partitions of run requests read from a position, as a broker's consumer does; a poll returns only the
    records the test made available (:meth:`add`), at most ``max_records``; commits and seeks are remembered."""

    def __init__(self) -> None:
        self.log: dict[TopicPartition, list[ConsumerRecord]] = {P0: [], P1: []}
        self.available: dict[TopicPartition, int] = {P0: 0, P1: 0}
        self.positions: dict[TopicPartition, int] = {P0: 0, P1: 0}
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.on_poll: Callable[[dict[TopicPartition, list[Any]]], None] = lambda polled: None
        self.lock = threading.Lock()

    def add(self, partition: TopicPartition, *definitions: str) -> None:
        """Append records to ``partition`` and make them available to polls."""
        with self.lock:
            for definition in definitions:
                offset = len(self.log[partition])
                value = RunRequested(definition=definition).to_bytes()
                self.log[partition].append(
                    ConsumerRecord(TOPIC, partition.partition, None, offset, 0, 0, None, value, [], None, 0, 0, 0)
                )
            self.available[partition] = len(self.log[partition])

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        with self.lock:
            left = max_records or 500
            polled: dict[TopicPartition, list[Any]] = {}
            for partition in (P0, P1):
                start = self.positions[partition]
                records = self.log[partition][start : min(self.available[partition], start + left)]
                if records:
                    polled[partition] = records
                    self.positions[partition] = start + len(records)
                    left -= len(records)
        self.on_poll(polled)
        return polled

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with self.lock:
            self.seeks.append((partition, offset))
            self.positions[partition] = offset

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        with self.lock:
            done = {partition: meta.offset for partition, meta in offsets.items()}
            for partition, offset in done.items():
                assert offset >= self.committed.get(partition, 0), "an offset committed backwards"
            if done != {p: o for p, o in self.committed.items() if p in done}:  # the same again changes nothing
                self.commits.append(done)
            self.committed.update(done)

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Callable[..., None]) -> None:
        self.commit(offsets)
        callback(offsets, None)

    def assignment(self) -> set[TopicPartition]:
        return {P0, P1}

    def next_fetch(self, partition: TopicPartition) -> int | None:
        """The partition's next fetch offset (None: read from the committed offset next)."""
        return self.positions[partition]

    @property
    def _subscription(self) -> SimpleNamespace:
        """kafka-python's subscription state, as far as the loop reads it (``fetch_position``)."""

        def position(partition: TopicPartition) -> SimpleNamespace | None:
            at = self.next_fetch(partition)
            return None if at is None else SimpleNamespace(offset=at)

        return SimpleNamespace(position=position)

    def subscription(self) -> None:
        return None

    def close(self) -> None:
        pass


def _loop(consumer: Consumer, producer: Producer, handle_round, rounds_in_flight: int = 2) -> ConsumerLoop[Any]:
    return ConsumerLoop(
        service="rounds-in-flight",
        consumer=consumer,
        producer=producer,
        decode=value_decoder(RunRequested.model_validate_json),
        dead_letter_topic="exports.dead-letters",
        handle_round=handle_round,
        rounds_in_flight=rounds_in_flight,
        dead_letter_backoff_seconds=0,
    )


def _outcome(request: RunRequested) -> list[Outgoing]:
    return [Outgoing(OUTCOMES, request.definition, request.definition.encode())]


def _step_until(loop: ConsumerLoop[Any], condition: Callable[[], bool]) -> None:
    """Turn the loop (``poll_once``) until ``condition`` holds."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the loop did not reach the expected state in time"
        loop.poll_once()


def test_the_next_round_is_polled_and_handled_while_a_round_is_in_flight_and_outcomes_keep_the_poll_order():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a", "b")
    second_round = threading.Event()
    overlapped: list[bool] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        if requests[0].definition == "a":
            # Done only once the loop has handed over the next round: never with one round at a time.
            overlapped.append(second_round.wait(DEADLINE_SECONDS))
        else:
            second_round.set()
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    loop.poll_records = lambda: 1
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    assert overlapped == [True]
    # Round "b" was done first; its outcome is produced, and its offset committed, after round "a"'s.
    assert producer.outcomes() == ["a", "b"]
    assert consumer.commits == [{P0: 1}, {P0: 2}]


def test_an_outage_in_a_round_hands_back_its_partition_with_the_next_rounds_records_there_and_loses_nothing():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    next_round = threading.Event()
    database_away = True
    handled: list[str] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        handled.extend(request.definition for request in requests)
        if requests[0].definition == "a" and database_away:
            assert next_round.wait(DEADLINE_SECONDS)  # the next round is in flight as this one meets the outage
            return [DependencyUnavailable("the catalog is unreachable")]
        if requests[0].definition == "b":
            next_round.set()
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    loop.poll_once()  # round 1: "a"
    consumer.add(P0, "b", "c")
    consumer.add(P1, "x")
    with pytest.raises(RoundInterrupted):
        _step_until(loop, lambda: False)  # round 2 ("b", "c", "x") polled, then round 1 hands "a" back
    assert handled == ["a", "b", "c", "x"]
    # The partition of the outage is read again from "a": "b" and "c" were handled, but neither produced nor
    # committed; the other partition's record of the later round is settled.
    assert producer.outcomes() == ["x"]
    assert consumer.committed == {P1: 1}
    assert consumer.positions[P0] == 0

    database_away = False
    _step_until(loop, lambda: consumer.committed.get(P0) == 3)
    assert producer.outcomes() == ["x", "a", "b", "c"]
    assert consumer.committed == {P0: 3, P1: 1}


def test_the_broker_away_hands_back_the_rounds_in_flight_and_commits_nothing():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    next_round = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        if requests[0].definition == "a":
            assert next_round.wait(DEADLINE_SECONDS)
        else:
            next_round.set()
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    loop.poll_once()  # round 1: "a"
    consumer.add(P1, "x")
    producer.refusing = True
    with pytest.raises(KafkaTimeoutError):
        _step_until(loop, lambda: False)
    # Round 1's outcome was refused: round 2 ("x", another partition) is not committed either; both read again.
    assert producer.attempts == 2
    assert producer.sent == []
    assert consumer.commits == []
    assert consumer.positions == {P0: 0, P1: 0}

    producer.refusing = False
    _step_until(loop, lambda: consumer.committed == {P0: 1, P1: 1})
    assert sorted(producer.outcomes()) == ["a", "x"]


def test_the_next_round_is_polled_while_the_broker_has_not_acknowledged_the_last_and_nothing_is_committed_before():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    producer.answer = threading.Event()  # a slow broker: no acknowledgement until the test says
    handled: list[str] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        handled.extend(request.definition for request in requests)
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    _step_until(loop, lambda: producer.outcomes() == ["a"])  # round 1's outcome handed to the producer
    consumer.add(P0, "b")
    _step_until(loop, lambda: handled == ["a", "b"])  # round 2 polled and handled meanwhile
    assert consumer.commits == []  # nothing committed before the broker acknowledged it
    producer.answer.set()
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    assert producer.outcomes() == ["a", "b"]
    assert consumer.commits == [{P0: 1}, {P0: 2}]


def test_a_held_record_is_not_handed_to_the_handler_again_while_its_round_is_in_flight():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "held")
    calls: list[list[str]] = []
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        names = [request.definition for request in requests]
        calls.append(names)
        if names == ["held"] and len(calls) == 1:
            return [HoldRecord("the partner's breaker is open", time.monotonic())]  # due at once
        if names == ["held"]:
            assert release.wait(DEADLINE_SECONDS)  # handed again: in flight until the test lets it go
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    _step_until(loop, lambda: len(calls) == 2)  # held, then handed to the handler again (due)
    consumer.add(P0, "after")
    _step_until(loop, lambda: len(calls) == 3)  # the next poll: the held record is in flight, not due again
    assert calls == [["held"], ["held"], ["after"]]
    release.set()
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    assert producer.outcomes() == ["held", "after"]
    assert len(loop.held) == 0


def test_nothing_is_committed_of_a_partition_revoked_while_its_round_is_in_flight():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    consumer.add(P1, "x")
    revoke = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        assert revoke.wait(DEADLINE_SECONDS)
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    loop.poll_once()  # one round: "a" and "x"

    def rebalance(polled: dict[TopicPartition, list[Any]]) -> None:
        loop._revoked({P0})  # what the loop's rebalance listener does as the group takes P0 away during a poll
        revoke.set()

    consumer.on_poll = rebalance
    _step_until(loop, lambda: P1 in consumer.committed)
    assert consumer.committed == {P1: 1}  # P0's next owner reads "a" again from the committed offset
    assert sorted(producer.outcomes()) == ["a", "x"]


def test_a_slow_handler_holds_the_loop_to_two_rounds_of_records_in_hand():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, *(f"d{i}" for i in range(40)))  # 8 rounds of 5
    started = [threading.Event() for _ in range(8)]
    gates = [threading.Event() for _ in range(8)]
    lock = threading.Lock()
    active = most_active = handed_out = most_uncommitted = 0

    def count_poll(polled: dict[TopicPartition, list[Any]]) -> None:
        nonlocal handed_out, most_uncommitted
        handed_out += sum(len(records) for records in polled.values())
        most_uncommitted = max(most_uncommitted, handed_out - consumer.committed.get(P0, 0))

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        nonlocal active, most_active
        index = int(requests[0].definition[1:]) // 5
        with lock:
            active += 1
            most_active = max(most_active, active)
        started[index].set()
        assert gates[index].wait(DEADLINE_SECONDS)  # slow: done only once the test lets this round go
        with lock:
            active -= 1
        return [_outcome(request) for request in requests]

    consumer.on_poll = count_poll
    loop = _loop(consumer, producer, handle_round)
    loop.poll_records = lambda: 5
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    try:
        for index in range(8):
            if index + 1 < 8:  # the next round is polled while this one is still in hand
                assert started[index + 1].wait(DEADLINE_SECONDS)
            gates[index].set()
        wait_until(lambda: consumer.committed.get(P0) == 40, timeout=DEADLINE_SECONDS, what="every record committed")
    finally:
        loop.stopping.set()
        for gate in gates:
            gate.set()
        thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()
    assert producer.outcomes() == [f"d{i}" for i in range(40)]
    assert most_active == 2  # a third round never started while two were in hand
    assert most_uncommitted <= 10  # two rounds' records at most


def test_stopping_settles_the_rounds_in_flight_before_the_loop_ends():
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    started, finish = threading.Event(), threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        started.set()
        assert finish.wait(DEADLINE_SECONDS)
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    assert started.wait(DEADLINE_SECONDS)
    loop.stopping.set()  # SIGTERM while "a" is being handled
    finish.set()
    thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()
    assert producer.outcomes() == ["a"]
    assert consumer.committed == {P0: 1}


def test_more_than_one_round_in_flight_needs_a_round_handler():
    with pytest.raises(ValueError, match="rounds_in_flight"):
        ConsumerLoop(
            service="x",
            consumer=Consumer(),
            producer=Producer(),
            decode=value_decoder(RunRequested.model_validate_json),
            dead_letter_topic="exports.dead-letters",
            handler=lambda request: [],
            rounds_in_flight=2,
        )


class WatchedConsumer(Consumer):
    """A :class:`Consumer` that notes every commit passing a record whose outcome the producer has not got yet
    (an offset committed before its record was settled: lost should the process stop there)."""

    def __init__(self, producer: Producer) -> None:
        super().__init__()
        self.producer = producer
        self.premature: list[tuple[TopicPartition, int, list[str]]] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        produced = set(self.producer.outcomes())
        for partition, meta in offsets.items():
            passed = [RunRequested.model_validate_json(r.value).definition for r in self.log[partition][: meta.offset]]
            missing = [name for name in passed if name not in produced]
            if missing:
                self.premature.append((partition, meta.offset, missing))
        super().commit(offsets)


def test_no_round_commits_past_a_held_record_that_a_later_round_in_flight_hands_back():
    producer = Producer()
    consumer = WatchedConsumer(producer)
    consumer.add(P0, "held", "b")
    calls: list[list[str]] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        calls.append([request.definition for request in requests])
        if len(calls) == 1:  # the partner's breaker is open for "held" (due again at once); "b" is delivered
            return [HoldRecord("the partner's breaker is open", time.monotonic()), _outcome(requests[1])]
        if len(calls) == 2:  # "held" handed to the handler again while "b"'s round is in flight: the catalog is away
            return [DependencyUnavailable("the catalog is unreachable")]
        return [_outcome(request) for request in requests]

    producer.answer = threading.Event()  # "b"'s outcome is acknowledged only once "held" was handed back
    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    try:
        # The second round handed "held" back.
        wait_until(
            lambda: len(calls) >= 2 and len(loop.held) == 0,
            timeout=DEADLINE_SECONDS,
            what="the held record handed back",
        )
        producer.answer.set()
        wait_until(lambda: consumer.committed.get(P0) == 2, timeout=DEADLINE_SECONDS, what="every record committed")
    finally:
        loop.stopping.set()
        producer.answer.set()
        thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()
    assert calls[:2] == [["held", "b"], ["held"]]
    # "b"'s round was committed after "held" was handed back: not past "held", which had no outcome yet.
    assert consumer.premature == []
    assert "held" in producer.outcomes()


def test_one_round_at_a_time_commits_nothing_past_a_held_record_handed_back_beside_one_settled():
    producer = Producer()
    consumer = WatchedConsumer(producer)
    consumer.add(P0, "h1", "h2", "b")
    calls: list[list[str]] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        calls.append([request.definition for request in requests])
        if len(calls) == 1:  # both held (their breaker open, due again at once); "b" delivered
            due = time.monotonic()
            return [HoldRecord("breaker open", due), HoldRecord("breaker open", due), _outcome(requests[2])]
        if len(calls) == 2:  # handed again: "h1" delivered, "h2" meets a catalog outage
            return [_outcome(requests[0]), DependencyUnavailable("the catalog is unreachable")]
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=1)
    loop.poll_once()
    with pytest.raises(RoundInterrupted):
        loop.poll_once()
    assert calls == [["h1", "h2", "b"], ["h1", "h2"]]
    assert consumer.premature == []
    assert consumer.committed.get(P0, 0) <= 1  # "h2" (offset 1) is read again: nothing committed past it
    assert consumer.positions[P0] == 1
    _step_until(loop, lambda: consumer.committed.get(P0) == 3)
    assert consumer.premature == []
    assert "h2" in producer.outcomes()


@pytest.mark.parametrize("rounds_in_flight", [1, 2])
def test_a_round_handler_answering_with_no_list_dead_letters_the_round_and_the_consumer_goes_on(rounds_in_flight):
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    calls: list[list[str]] = []

    def handle_round(requests: Sequence[RunRequested]) -> Any:
        calls.append([request.definition for request in requests])
        if len(calls) == 1:
            return None  # a handler's bug: no results at all
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=rounds_in_flight)
    _step_until(loop, lambda: consumer.committed.get(P0) == 1)
    consumer.add(P0, "b")
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    # "a" was dead-lettered with the handler's failure (not lost, not handled forever); "b" was delivered.
    letters = [value for topic, value in producer.sent if topic == "exports.dead-letters"]
    assert len(letters) == 1
    assert b"TypeError" in letters[0]
    assert producer.outcomes() == ["b"]
    assert calls == [["a"], ["b"]]
