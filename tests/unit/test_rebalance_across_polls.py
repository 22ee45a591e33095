"""Rebalances whose steps fall inside kafka-python's polls, with rounds in flight (``rounds_in_flight`` > 1).

Kafka-python's poll goes on polling while no record comes, so one poll may end a rebalance and begin the next; a
rebalance may also span several polls (its assignment comes later), and the group refuses commits meanwhile. The
partitions given back keep their position: what this consumer settled of them before it is committed once the
rebalance is over, never past a record not settled (a held one sought back to), and nothing of a partition taken
away (its new owner's commits are not overwritten, even as the loop stops). The stand-in consumer runs the steps a
test queues in its polls and refuses commits while a rebalance goes on. Nothing waits on time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from kafka.errors import RebalanceInProgressError
from kafka.structs import TopicPartition

from shared.events import RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import ForgetRevoked, HoldRecord
from shared.kafka.loop import ConsumerLoop
from tests.unit.test_rebalance_in_flight import Handling, _listener
from tests.unit.test_rounds_in_flight import DEADLINE_SECONDS, P0, P1, Consumer, Producer, _loop, _outcome, _step_until


class Rebalancing(Consumer):
    """A :class:`Consumer` whose polls run the rebalance steps queued in ``script`` (one list per poll) and which,
    as kafka-python does, refuses commits between a revocation and the next assignment (RebalanceInProgressError:
    raised by ``commit``, told to the callback by ``commit_async``), and tracks its assignment."""

    def __init__(self) -> None:
        super().__init__()
        self.script: deque[list[Callable[[], None]]] = deque()
        self.rebalancing = False
        self.owned: set[TopicPartition] = {P0, P1}
        self.refused: list[dict[TopicPartition, int]] = []
        self.foreign: list[dict[TopicPartition, int]] = []  # commits of partitions not assigned
        self.backwards: list[tuple[TopicPartition, int, int]] = []  # (partition, committed, sent lower)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        if self.script:
            for action in self.script.popleft():
                action()
        if self.rebalancing:
            return {}
        return super().poll(timeout_ms, max_records)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        done = {p: m.offset for p, m in offsets.items()}
        if self.rebalancing:
            self.refused.append(done)
            raise RebalanceInProgressError("rebalancing")
        if set(done) - self.owned:
            self.foreign.append({p: o for p, o in done.items() if p not in self.owned})
        with self.lock:
            self.backwards.extend((p, self.committed[p], o) for p, o in done.items() if o < self.committed.get(p, 0))
        super().commit(offsets)

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Callable[..., None]) -> None:
        try:
            self.commit(offsets)
        except RebalanceInProgressError as exc:
            callback(offsets, exc)
            return
        callback(offsets, None)

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)


def _revoke(consumer: Rebalancing, listener: Any) -> Callable[[], None]:
    def revoke() -> None:
        listener.on_partitions_revoked(set(consumer.owned))
        consumer.rebalancing = True

    return revoke


def _assign(consumer: Rebalancing, listener: Any, partitions: set[TopicPartition]) -> Callable[[], None]:
    def assign() -> None:
        consumer.owned = set(partitions)
        consumer.rebalancing = False
        listener.on_partitions_assigned(set(partitions))

    return assign


def _simple_round(handling: Handling) -> Callable[[Sequence[RunRequested]], list[list[Outgoing] | BaseException]]:
    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests):
            return [_outcome(request) for request in requests]

    return handle_round


def _turns(loop: Any, n: int) -> None:
    for _ in range(n):
        loop.poll_once()


def _a_and_b_settled_their_commit_refused() -> tuple[Rebalancing, ConsumerLoop[Any], ForgetRevoked]:
    """A loop with rounds in flight that settled "a" and "b" of P0, whose commit, in flight, the rebalance that
    begins refuses: the stand-in, the loop and its listener."""
    consumer, producer = Rebalancing(), Producer()
    consumer.add(P0, "a", "b")
    handling = Handling()
    loop = _loop(consumer, producer, _simple_round(handling), rounds_in_flight=3)
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: consumer.committed.get(P0) == 2)
    consumer.committed.pop(P0)
    return consumer, loop, listener


def test_a_commit_to_send_again_survives_a_second_rebalance_beginning_in_the_poll_that_ended_the_first():
    """Two rebalances in a row (the group's leader learning a new member's topic late): the first ends and the second
    begins within one poll. The commit the first one's refusal left to send again waits for the second to end (sent
    in the middle of it, it would be refused, and never sent again)."""
    consumer, loop, listener = _a_and_b_settled_their_commit_refused()
    consumer.script.extend(
        [
            [_revoke(consumer, listener), _assign(consumer, listener, {P0, P1}), _revoke(consumer, listener)],
            [],
            [_assign(consumer, listener, {P0, P1})],
        ]
    )
    _turns(loop, 10)
    assert consumer.committed.get(P0) == 2, "settled records 'a' and 'b' never committed"


def test_a_second_rebalance_within_one_poll_taking_the_partition_away_leaves_it_uncommitted_by_this_consumer():
    """The second rebalance gives the partition to another consumer, which reads it from the committed offset: this
    one must not commit it any more."""
    consumer, loop, listener = _a_and_b_settled_their_commit_refused()
    consumer.script.append(
        [
            _revoke(consumer, listener),
            _assign(consumer, listener, {P0, P1}),
            _revoke(consumer, listener),
            _assign(consumer, listener, {P1}),  # P0 to another consumer, which reads it from the committed offset
        ]
    )
    _turns(loop, 3)
    assert consumer.foreign == [], "committed a partition this consumer no longer owns"


def test_a_round_started_while_a_rebalance_goes_on_commits_its_records_once_the_partition_is_given_back():
    """A round in flight holds a record again (due at once) after the rebalance began; the next round, started
    while the rebalance goes on (its assignment several polls later), settles it. That round's commit waits for the
    rebalance to end too (sent meanwhile, it would be refused, and only the held record's offset sent after)."""
    consumer, producer = Rebalancing(), Producer()
    consumer.add(P0, "x", "y")
    handling = Handling()
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x", "y"]:
                assert release.wait(DEADLINE_SECONDS)
                return [HoldRecord("the round's deadline passed", time.monotonic()), _outcome(requests[1])]
            return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    window = loop._window
    assert window is not None
    _step_until(loop, lambda: handling.calls == [["x", "y"]])
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()  # the rebalance begins: P0 and P1 revoked
    assert consumer.rebalancing
    release.set()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while handling.calls != [["x", "y"], ["x"]] or len(window):  # "x" held again, then settled by a new round
        assert time.monotonic() < deadline, (handling.calls, len(window))
        loop.poll_once()
    consumer.script.append([_assign(consumer, listener, {P0, P1})])  # the rebalance ends, both given back
    _turns(loop, 5)
    assert producer.outcomes() == ["y", "x"]
    assert consumer.committed.get(P0) == 2, "x and y settled, not committed"


def test_a_round_settled_while_a_rebalance_goes_on_commits_no_further_than_the_held_record_sought_back_to():
    """ "h" held for an hour, "x" with the handler; the rebalance begins (P0 sought back to "h": its hold forgotten),
    the round of "x" is settled while it goes on (its commit kept for later), then P0 is given back at "h"'s offset:
    nothing is committed past "h", which is not settled (a crash would lose it)."""
    consumer, producer = Rebalancing(), Producer()
    consumer.add(P0, "h")
    handling = Handling()
    release = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x"]:
                assert release.wait(DEADLINE_SECONDS)
            # The partner's breaker stays open: "h" is held whenever it comes.
            return [
                HoldRecord("the partner's breaker is open", time.monotonic() + 3600.0) if name == "h" else _outcome(r)
                for name, r in zip(names, requests, strict=True)
            ]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    window = loop._window
    assert window is not None
    _step_until(loop, lambda: len(loop.held) == 1)
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    assert consumer.positions[P0] == 0  # sought back to "h"
    release.set()
    _step_until(loop, lambda: not len(window))  # "x" settled while the rebalance goes on
    consumer.script.append([_assign(consumer, listener, {P0, P1})])
    _turns(loop, 10)
    assert consumer.committed.get(P0, 0) == 0, "committed past 'h', not settled (lost after a crash)"


def test_the_commit_of_a_partition_taken_away_is_not_sent_again_as_the_loop_stops():
    """A partition given back by one rebalance and taken away by the next in the same poll: as the loop stops
    (SIGTERM), it commits again, waiting, what it committed without waiting, but not that partition, whose new owner
    has committed further meanwhile."""
    consumer, loop, listener = _a_and_b_settled_their_commit_refused()
    consumer.script.append(
        [
            _revoke(consumer, listener),
            _assign(consumer, listener, {P0, P1}),
            _revoke(consumer, listener),
            _assign(consumer, listener, {P1}),
        ]
    )
    _turns(loop, 3)
    with consumer.lock:
        consumer.committed[P0] = 50  # P0's new owner has handled and committed up to 50 meanwhile
    loop.stopping.set()
    loop.run()  # SIGTERM: the loop settles and confirms its commits, then closes
    assert consumer.backwards == [], "a commit of P0 sent below what its new owner committed"


def test_a_round_settled_while_a_rebalance_goes_on_leaves_no_memory_that_passes_the_held_record_sought_back_to():
    """The partner's breaker is open: "h" is held for an hour, then "x" with it ("x", "y" in one round, "z" in the
    next, both in flight). The rebalance begins (P0 sought back to "h", its hold forgotten); the round of "x" and "y"
    settles while it goes on ("x" held again). P0 given back at "h": "h", "x" and "y" are read again ("h" with the
    handler once more). When the round of "z" settles, nothing is committed past "h": it is not settled (a crash
    would lose it and "x"), and no later commit goes backwards."""
    consumer, producer = Rebalancing(), Producer()
    consumer.add(P0, "h")
    handling = Handling()
    gates = {"xy": threading.Event(), "z": threading.Event(), "h again": threading.Event()}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x", "y"]:
                assert gates["xy"].wait(DEADLINE_SECONDS)
            if names == ["z"]:
                assert gates["z"].wait(DEADLINE_SECONDS)
            if "h" in names and sum("h" in call for call in handling.calls) > 1:
                assert gates["h again"].wait(DEADLINE_SECONDS)
            return [
                HoldRecord("the partner's breaker is open", time.monotonic() + 3600.0)
                if name in ("h", "x")
                else _outcome(request)
                for name, request in zip(names, requests, strict=True)
            ]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    listener = _listener(loop, consumer)
    window = loop._window
    assert window is not None
    _step_until(loop, lambda: len(loop.held) == 1)  # "h" held for an hour
    consumer.add(P0, "x", "y")
    _step_until(loop, lambda: ["x", "y"] in handling.calls)
    consumer.add(P0, "z")
    _step_until(loop, lambda: ["z"] in handling.calls)
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()  # the rebalance begins: "h" forgotten, P0 sought back to it
    assert consumer.positions[P0] == 0
    gates["xy"].set()
    _step_until(loop, lambda: len(window) == 1)  # "x" held again, "y" settled, while the rebalance goes on
    consumer.script.append([_assign(consumer, listener, {P0, P1})])
    loop.poll_once()  # given back at "h": "h", "x", "y" read again ("z" too: a copy of the round in flight)
    gates["z"].set()
    _step_until(loop, lambda: len(window) == 1)  # the round of "z" settled; "h" with the handler again
    assert consumer.committed.get(P0, 0) == 0, "committed past 'h', which is with the handler, not settled"
    gates["h again"].set()
    _step_until(loop, lambda: not len(window))
    _turns(loop, 3)
    assert consumer.backwards == []
    assert consumer.committed.get(P0, 0) == 0  # "h" and "x" held again: nothing committed past them
