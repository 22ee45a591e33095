"""A record handed back never seeks its partition forward past records read again since its round began.

With rounds in flight, a rebalance that gives a partition back seeks it back to its first held record ("h") and
forgets that hold: "h" is read again. If a later record's round then meets an outage, or its outcomes are not
acknowledged (the broker away), the loop hands that record back; seeking the partition to it, before the consumer
fetched "h" again, would skip "h" for good and a later commit would pass it: lost. The consumer's position tells
it: a partition whose next fetch is at or before the record handed back already reads it again (the fifth review
of the rebalance commits, session 45; these fail on 5fe4d03).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from shared.events import RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable
from tests.unit.test_rebalance_across_polls import Rebalancing, _assign, _revoke
from tests.unit.test_rebalance_in_flight import LONG, Handling, _listener
from tests.unit.test_rounds_in_flight import DEADLINE_SECONDS, P0, P1, Producer, _loop, _outcome, _step_until


class FetchingLate(Rebalancing):
    """Rebalancing, but a partition in ``not_fetched_yet`` returns nothing to polls (its fetch from the position
    the rebalance sought is not back yet): the loop can act on its rounds before the held record is read again."""

    def __init__(self) -> None:
        super().__init__()
        self.not_fetched_yet: set[TopicPartition] = set()

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        polled = super().poll(timeout_ms, max_records)
        with self.lock:
            for partition in self.not_fetched_yet & set(polled):
                self.positions[partition] -= len(polled.pop(partition))
        return polled


Handler = Callable[[Sequence[RunRequested]], list[list[Outgoing] | BaseException]]


Fate = Callable[[RunRequested], list[Outgoing] | BaseException]


def _handler(handling: Handling, fates: dict[tuple[str, int], Fate], seen: dict[str, int]) -> Handler:
    """A round handler: the n-th time a name is handed to it, ``fates[(name, n)](request)`` is its result (its
    outcome otherwise); ``seen`` counts the names handed."""

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            results: list[list[Outgoing] | BaseException] = []
            for name, request in zip(names, requests, strict=True):
                seen[name] = seen.get(name, 0) + 1
                results.append(fates.get((name, seen[name]), _outcome)(request))
            return results

    return handle_round


def _rounds_in_flight(loop: Any) -> int:
    window = loop._window
    assert window is not None
    return len(window)


def _settle(loop: Any, consumer: FetchingLate, producer: Producer, done: Callable[[], bool]) -> None:
    """Turn the loop (its interruptions raised and swallowed, as the service's backoff does) until the rebalance
    steps queued have run and ``done``; then let the partition's fetch come back and turn it until no round is in
    flight."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while consumer.script or consumer.rebalancing or not done():
        assert time.monotonic() < deadline, "the loop did not settle its rounds in time"
        with suppress(RoundInterrupted, KafkaTimeoutError):  # the service waits its backoff and turns again
            loop.poll_once()
    consumer.not_fetched_yet.clear()
    producer.refusing = False
    _step_until(loop, lambda: not _rounds_in_flight(loop) and consumer.positions[P0] == len(consumer.log[P0]))


@pytest.mark.parametrize("interruption", ["database outage", "outcomes not acknowledged"])
def test_a_round_interrupted_after_a_rebalance_gave_its_partition_back_does_not_skip_the_held_record(
    interruption: str,
) -> None:
    """ "h" held for an hour, "x" with the handler. A rebalance gives P0 back: "h"'s hold forgotten, P0 sought back
    to 0. Before "h" is fetched again, "x"'s round is interrupted and hands "x" back: "h" is still handled again
    (and "x"), and what is committed never passes a record not handled to its end."""
    consumer, producer = FetchingLate(), Producer()
    consumer.add(P0, "h")
    handling, seen, gate = Handling(), dict[str, int](), threading.Event()

    def x_first(request: RunRequested) -> list[Outgoing] | BaseException:
        assert gate.wait(DEADLINE_SECONDS)
        return DependencyUnavailable("catalog away") if interruption == "database outage" else _outcome(request)

    fates: dict[tuple[str, int], Fate] = {
        ("h", 1): lambda _: HoldRecord("breaker open", time.monotonic() + LONG),
        ("x", 1): x_first,
    }
    loop = _loop(consumer, producer, _handler(handling, fates, seen), rounds_in_flight=3)
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: len(loop.held) == 1)
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)

    def give_back_not_fetched_yet() -> None:
        _assign(consumer, listener, {P0, P1})()
        consumer.not_fetched_yet.add(P0)

    consumer.script.append([_revoke(consumer, listener), give_back_not_fetched_yet])
    loop.poll_once()
    assert consumer.positions[P0] == 0  # sought back to "h", its hold forgotten
    producer.refusing = interruption == "outcomes not acknowledged"
    gate.set()
    _settle(loop, consumer, producer, lambda: seen.get("x", 0) >= 1 and not _rounds_in_flight(loop))

    assert seen.get("h", 0) == 2, f"'h' handled {seen.get('h', 0)} time(s): skipped by a seek forward"
    assert seen.get("x", 0) == 2
    assert consumer.committed.get(P0) == 2
    assert not consumer.backwards


def test_a_record_held_again_during_a_rebalance_and_interrupted_when_due_does_not_skip_the_held_record() -> None:
    """ "h" held for an hour, "y" with the handler. A rebalance begins ("h"'s hold forgotten, P0 sought back to 0);
    meanwhile "y" is held again, due at once; P0 is given back, "h" not fetched yet. "y", due, meets a database
    outage in a later round and is handed back: "h" is still handled again."""
    consumer, producer = FetchingLate(), Producer()
    consumer.add(P0, "h")
    handling, seen, gate = Handling(), dict[str, int](), threading.Event()

    def y_first(_: RunRequested) -> BaseException:
        assert gate.wait(DEADLINE_SECONDS)
        return HoldRecord("breaker half-open", 0.0)

    fates: dict[tuple[str, int], Fate] = {
        ("h", 1): lambda _: HoldRecord("breaker open", time.monotonic() + LONG),
        ("y", 1): y_first,
        ("y", 2): lambda _: DependencyUnavailable("catalog away"),
    }
    loop = _loop(consumer, producer, _handler(handling, fates, seen), rounds_in_flight=3)
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: len(loop.held) == 1)
    consumer.add(P0, "y")
    _step_until(loop, lambda: ["y"] in handling.calls)

    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    gate.set()
    _step_until(loop, lambda: loop.held.count_held([(P0, 1)]) == 1)  # "y" held again during the rebalance

    def give_back_not_fetched_yet() -> None:
        _assign(consumer, listener, {P0, P1})()
        consumer.not_fetched_yet.add(P0)

    consumer.script.append([give_back_not_fetched_yet])
    _settle(loop, consumer, producer, lambda: seen.get("y", 0) >= 2 and not _rounds_in_flight(loop))

    assert seen.get("h", 0) == 2, f"'h' handled {seen.get('h', 0)} time(s): skipped by a seek forward"
    assert seen.get("y", 0) == 3
    assert consumer.committed.get(P0) == 2
    assert not consumer.backwards
