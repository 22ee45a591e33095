"""A rebalance while a round is in flight (``ConsumerLoop(rounds_in_flight=2)``): the partition that held a record
is sought back to it (kafka-python keeps the positions of partitions the same consumer gets back, see
:class:`shared.kafka.held_records.ForgetRevoked`), so the next poll reads again records a round in flight is still
handling. They are not handed to the handler a second time at once, and not lost either: each ends as the round in
flight settles it (delivered: committed once, its outcome produced once; held again: still held, nothing committed
past it; handed back: read again and handled after).

The Kafka clients are the stand-ins of :mod:`tests.unit.test_rounds_in_flight`; the rebalance is what the loop's
listener does during a poll, called between two turns of the loop. Nothing waits on time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from kafka.structs import TopicPartition

from shared.events import RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import ForgetRevoked, HoldRecord
from shared.kafka.loop import ConsumerLoop, RoundInterrupted
from shared.outages import DependencyUnavailable
from tests.unit.test_rounds_in_flight import (
    DEADLINE_SECONDS,
    P0,
    P1,
    Consumer,
    Producer,
    _loop,
    _outcome,
    _step_until,
)

#: A hold longer than the test: a record held so is handed to the handler again only if read again.
LONG = 3600.0


class Handling:
    """The calls of a round handler, in order, and each record handed to it while an earlier call still had it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.concurrent: list[str] = []
        self._now: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def call(self, requests: Sequence[RunRequested]) -> Iterator[list[str]]:
        names = [request.definition for request in requests]
        with self._lock:
            self.calls.append(names)
            self.concurrent.extend(name for name in names if self._now[name])
            self._now.update(names)
        try:
            yield names
        finally:
            with self._lock:
                self._now.subtract(names)


class ConsumerBeforePoll(Consumer):
    """A :class:`Consumer` that runs ``before_poll`` as a poll begins (the loop has taken the held records due)."""

    def __init__(self) -> None:
        super().__init__()
        self.before_poll: Callable[[], None] = lambda: None

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self.before_poll()
        return super().poll(timeout_ms, max_records)


def _listener(loop: ConsumerLoop[Any], consumer: Consumer) -> ForgetRevoked:
    """The rebalance listener the loop gives a consumer it subscribes (the stand-in's subscription is none)."""
    return ForgetRevoked(
        loop.held,
        loop._revoked,
        seek=consumer.seek,
        position=lambda p: consumer.positions[p],
        assigned=loop._assigned,
    )


@pytest.mark.parametrize(
    ("fate", "decided"),
    [
        ("delivered", "after the rebalance"),
        ("held", "after the rebalance"),
        ("handed back", "after the rebalance"),
        # The round in flight has its results, its outcomes not acknowledged yet. (A round that handed a record back
        # is settled at once, the loop waiting for no other round: no round is in flight then.)
        ("delivered", "before the rebalance"),
        ("held", "before the rebalance"),
    ],
)
def test_records_read_again_after_a_rebalance_while_their_round_is_in_flight_are_not_handled_twice_at_once(
    fate: str, decided: str
):
    consumer, producer = ConsumerBeforePoll(), Producer()
    consumer.add(P0, "h")
    handling = Handling()
    calls, concurrent = handling.calls, handling.concurrent
    release = threading.Event()
    if decided == "before the rebalance":
        release.set()
        producer.answer = threading.Event()  # the round stays in flight, its outcomes not acknowledged yet

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests):
            if len(calls) == 1:  # the partner's breaker is open: "h" is due again at once
                return [HoldRecord("the partner's breaker is open", time.monotonic())]
            if len(calls) == 2:  # "h" (due) and "b" (polled): the round in flight during the rebalance
                assert release.wait(DEADLINE_SECONDS)
                if fate == "held":
                    return [
                        HoldRecord("the partner's breaker is open again", time.monotonic() + LONG),
                        _outcome(requests[1]),
                    ]
                if fate == "handed back":
                    return [DependencyUnavailable("the catalog is unreachable"), _outcome(requests[1])]
            return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round)
    listener = _listener(loop, consumer)

    def step() -> None:
        with suppress(RoundInterrupted):  # "h" handed back: read again at the next poll
            loop.poll_once()

    def step_until(condition) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not condition():
            assert time.monotonic() < deadline, "the loop did not reach the expected state in time"
            step()

    def add_b_once_h_is_due() -> None:  # the same round takes "h" (due again) and "b" (polled)
        if len(loop.held) == 1 and len(consumer.log[P0]) == 1:
            consumer.add(P0, "b")

    consumer.before_poll = add_b_once_h_is_due
    step_until(lambda: len(calls) == 2)  # "h" due again with "b": in flight
    assert calls == [["h"], ["h", "b"]]
    window = loop._window
    assert window is not None
    if decided == "before the rebalance":
        # The round's results are in and handed to the producer (whose answer waits): "h" held again, or handed back.
        step_until(lambda: all(pending.results is None for pending in window))
        assert len(window) == 1
    # The group rebalances during a poll and gives both partitions back: "h" forgotten, P0 sought back to it.
    listener.on_partitions_revoked({P0, P1})
    listener.on_partitions_assigned({P0, P1})
    assert consumer.positions[P0] == 0
    step_until(lambda: consumer.positions[P0] == 2)  # "h" and "b" read again while their round is in flight
    release.set()
    if producer.answer is not None:
        producer.answer.set()
    if fate == "held":
        step_until(lambda: not len(window))
    else:
        step_until(lambda: consumer.committed.get(P0) == 2)
    assert concurrent == []  # never handed to the handler while a round in flight handles it
    # Handed to the handler again only when read again after the round in flight handed "h" back (with "b")
    assert calls[2:] == ([["h", "b"]] if fate == "handed back" else [])
    assert producer.outcomes() == (["b"] if fate == "held" else ["h", "b"])  # each once
    if fate == "held":
        assert len(loop.held) == 1  # "h" still held (due in an hour), nothing committed past it
        assert consumer.committed.get(P0, 0) == 0
        step()
        assert not len(window)  # not due: no round handed it to the handler again
    else:
        assert len(loop.held) == 0


def test_a_held_record_a_later_round_handles_while_the_round_that_held_it_is_in_flight_is_not_handed_a_third_time():
    """A round holds a record (due again at once) and waits for the broker's answer for another; the next round takes
    the held record: once the first round is committed, the record is still in the second's hands, not due again."""
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "h", "x")
    handling = Handling()
    calls, concurrent = handling.calls, handling.concurrent
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["h", "x"]:
                return [HoldRecord("the partner's breaker is open", time.monotonic()), _outcome(requests[1])]
            assert release.wait(DEADLINE_SECONDS)
            return [_outcome(request) for request in requests]

    producer.answer = threading.Event()  # "x"'s outcome is acknowledged once "h" is with the handler again
    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    while calls != [["h", "x"], ["h"]]:
        assert time.monotonic() < deadline, f"the held record was not handed to the next round: {calls}"
        loop.poll_once()
    producer.answer.set()
    while len(window) != 1:  # the first round committed, the second still with the handler
        assert time.monotonic() < deadline, "the first round was not committed"
        loop.poll_once()
    loop.poll_once()
    assert len(window) == 1  # "h" not due again while the second round has it
    release.set()
    while consumer.committed.get(P0) != 2:
        assert time.monotonic() < deadline, "the held record was not committed"
        loop.poll_once()
    assert concurrent == []
    assert producer.outcomes() == ["x", "h"]


@pytest.mark.parametrize("rebalances", [1, 2])
@pytest.mark.parametrize("answered", ["before", "after"])
def test_what_a_round_in_flight_settles_of_a_partition_revoked_and_given_back_is_committed(
    rebalances: int, answered: str
):
    """A round in flight commits nothing of a partition revoked meanwhile (its next owner reads it again from the
    committed offset), but kafka-python keeps the position of a partition given back to the same consumer: its
    records are not read again, so the round commits them after all once it settles them, once or after two
    rebalances in a row (the group's leader learns a new member's topic late). So does a commit sent just before the
    rebalance, which the rebalance may have refused: sent again. Nothing is handled or produced twice."""
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a", "b")
    handling = Handling()
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests):
            if "c" in [request.definition for request in requests]:
                assert release.wait(DEADLINE_SECONDS)
            return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    refused: list[dict[TopicPartition, int]] = []
    if answered == "before":
        # "a" and "b" settled, their commit sent without waiting: the rebalance refuses it.
        _step_until(loop, lambda: consumer.committed.get(P0) == 2)
        consumer.committed.pop(P0)
        refused.append({P0: 2})
    consumer.add(P0, "c")
    _step_until(loop, lambda: any("c" in names for names in handling.calls))  # with the handler, in a round in flight
    for _ in range(rebalances):
        listener.on_partitions_revoked({P0, P1})
        listener.on_partitions_assigned({P0, P1})  # both given back, their positions kept
    loop.poll_once()
    if answered == "before":
        assert consumer.committed.get(P0) == 2, "the commit the rebalance may have refused is sent again"
    release.set()
    _step_until(loop, lambda: consumer.committed.get(P0) == 3)
    assert consumer.positions[P0] == 3  # nothing read again
    assert [name for names in handling.calls for name in names] == ["a", "b", "c"]  # each handed to it once
    assert handling.concurrent == []
    assert producer.outcomes() == ["a", "b", "c"]  # each produced once


def test_a_round_in_flight_commits_nothing_of_a_partition_revoked_and_not_given_back():
    """Another consumer reads the partition from the committed offset: this one must not commit it meanwhile."""
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "a")
    handling = Handling()
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests):
            assert release.wait(DEADLINE_SECONDS)
            return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: handling.calls == [["a"]])
    listener.on_partitions_revoked({P0, P1})
    listener.on_partitions_assigned({P1})  # P0 moved to another consumer
    release.set()
    window = loop._window
    assert window is not None
    _step_until(loop, lambda: not len(window))
    assert producer.outcomes() == ["a"]
    assert P0 not in consumer.committed


def test_a_round_in_flight_commits_a_partition_given_back_no_further_than_the_held_record_it_was_sought_back_to():
    """A held record's partition is sought back to it as it is revoked (its hold forgotten): a round in flight with
    later records of that partition, given back, commits none of them past the held record until that one is settled
    again (a crash in between would lose it)."""
    consumer, producer = Consumer(), Producer()
    consumer.add(P0, "h")
    handling = Handling()
    release_x, release_h = threading.Event(), threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if len(handling.calls) == 1:
                return [HoldRecord("the partner's breaker is open", time.monotonic() + LONG)]
            assert (release_x if names == ["x"] else release_h).wait(DEADLINE_SECONDS)
            return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    window = loop._window
    assert window is not None
    _step_until(loop, lambda: len(loop.held) == 1)  # "h" held for an hour
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)  # "x" with the handler, in a round in flight
    listener.on_partitions_revoked({P0, P1})  # "h" forgotten, P0 sought back to it
    listener.on_partitions_assigned({P0, P1})
    assert consumer.positions[P0] == 0
    _step_until(loop, lambda: handling.calls.count(["h"]) == 2)  # read again: "h" handled, "x" a copy
    release_x.set()
    _step_until(loop, lambda: len(window) == 1)  # the round of "x" settled and committed; "h" with the handler
    assert consumer.committed.get(P0, 0) == 0, "committed past the held record, which is not settled yet"
    release_h.set()
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    assert handling.concurrent == []
    assert producer.outcomes() == ["x", "h"]  # each produced once
