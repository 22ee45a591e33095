"""Rebalances after a lost group membership, with rounds in flight (``rounds_in_flight`` > 1).

A consumer whose session expired loses its partitions (kafka-python drops their positions); an interim owner may
handle and commit them meanwhile, and when they come back they are read anew from the committed offset. A round in
flight from before the loss then owns nothing of them, even should a later rebalance give them back: it commits
nothing of them, never below the interim owner's offset, never past a record read again and not settled, holds none
of their records (nor copies of them), and an outage it meets hands none of them back (no seek of a partition read
anew). A partition whose position cannot be told keeps its holds. The stand-in consumer (``Moving``)
rebalances inside its polls, refuses commits meanwhile, drops the position of a partition not kept, and records
commits that go backwards. Nothing waits on time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import pytest
from kafka.errors import RebalanceInProgressError
from kafka.structs import TopicPartition

from shared.events import RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import ForgetRevoked, HoldRecord
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable
from tests.unit.test_rebalance_across_polls import Rebalancing, _revoke
from tests.unit.test_rebalance_in_flight import Handling
from tests.unit.test_rounds_in_flight import DEADLINE_SECONDS, P0, P1, Producer, _loop, _outcome, _step_until


class Moving(Rebalancing):
    """Rebalancing, but a partition not kept loses its position (read from the committed offset when it comes back),
    and commits backwards are recorded, not asserted."""

    def __init__(self) -> None:
        super().__init__()
        self.no_position: set[TopicPartition] = set()

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        done = {p: m.offset for p, m in offsets.items()}
        if self.rebalancing:
            self.refused.append(done)
            raise RebalanceInProgressError("rebalancing")
        if set(done) - self.owned:
            self.foreign.append({p: o for p, o in done.items() if p not in self.owned})
        with self.lock:
            self.backwards.extend((p, self.committed[p], o) for p, o in done.items() if o < self.committed.get(p, 0))
            self.commits.append(done)
            self.committed.update(done)

    def next_fetch(self, partition: TopicPartition) -> int | None:
        return None if partition in self.no_position else self.positions[partition]


def _listener(loop: Any, consumer: Moving) -> ForgetRevoked:
    """The loop's listener, with the stand-in's positions (none for a partition assigned anew)."""
    return ForgetRevoked(
        loop.held,
        loop._revoked,
        seek=consumer.seek,
        position=lambda p: None if p in consumer.no_position else consumer.positions[p],
        assigned=loop._assigned,
    )


def _assign(consumer: Moving, listener: Any, partitions: set[TopicPartition]) -> Callable[[], None]:
    """The end of a rebalance: ``partitions`` assigned; those new to this consumer are read from the committed
    offset."""

    def assign() -> None:
        for p in partitions - consumer.owned:  # new to this consumer: read from the committed offset
            consumer.no_position.add(p)
        consumer.owned = set(partitions)
        consumer.rebalancing = False
        listener.on_partitions_assigned(set(partitions))
        for p in partitions & consumer.no_position:
            consumer.positions[p] = consumer.committed.get(p, 0)
        consumer.no_position -= partitions

    return assign


def _lost_and_rejoined(consumer: Moving, listener: Any) -> Callable[[], None]:
    """The session expired: every partition lost (positions dropped), then assigned anew within the same poll."""

    def step() -> None:
        listener.on_partitions_lost({P0, P1})
        consumer.no_position |= {P0, P1}
        consumer.owned = set()
        _assign(consumer, listener, {P0, P1})()

    return step


def test_a_round_from_before_a_lost_membership_commits_nothing_of_the_partition_a_later_rebalance_gives_back():
    """ "w" held for an hour, "x" with the handler (round R1). The membership is lost and P0 assigned anew in one poll:
    "w" and "x" are read again from 0 ("w" with the handler in R2, "x" a copy of R1's). A normal rebalance then gives
    P0 back at 2: R1 must not take it for its own (records before 2 were read again since): settling "x", it commits
    nothing while "w" is with the handler, not settled (a crash would lose it), and nothing goes backwards."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "w")
    handling = Handling()
    gates = {"x": threading.Event(), "w2": threading.Event()}
    count: dict[str, int] = {}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            out: list[list[Outgoing] | BaseException] = []
            for n, r in zip(names, requests, strict=True):
                count[n] = count.get(n, 0) + 1
                if n == "w":
                    if count[n] > 1:
                        assert gates["w2"].wait(DEADLINE_SECONDS)
                    out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                elif n == "x":
                    assert gates["x"].wait(DEADLINE_SECONDS)
                    out.append(_outcome(r))
                else:
                    out.append(_outcome(r))
            return out

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: len(loop.held) == 1)  # w held for an hour
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)  # R1: x, with the handler
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()  # w, x read again from 0: R2 handles w (x a copy of R1)
    _step_until(loop, lambda: count.get("w", 0) >= 2)
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    consumer.script.append([_assign(consumer, listener, {P0, P1})])
    loop.poll_once()
    gates["x"].set()
    _step_until(loop, lambda: len(window) == 1)  # R1 settled and committed; R2 (w) still with the handler
    committed_while_w_in_flight = consumer.committed.get(P0, 0)
    gates["w2"].set()
    _step_until(loop, lambda: not len(window))
    for _ in range(3):
        loop.poll_once()
    assert committed_while_w_in_flight == 0, f"committed {committed_while_w_in_flight} past w (0), with the handler"
    assert consumer.backwards == []


def test_a_round_from_before_a_lost_membership_never_commits_below_the_interim_owner():
    """ "x" (offset 0) with the handler; the membership is lost, an interim owner handles P0 and commits 5; P0 comes
    back anew (read from 5), then a normal rebalance gives it back: the round of "x" commits nothing of P0 (1 would be
    below the interim owner's 5)."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "x")
    handling = Handling()
    gate = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x"]:
                assert gate.wait(DEADLINE_SECONDS)
            return [_outcome(r) for r in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: handling.calls == [["x"]])
    consumer.add(P0, "a", "b", "c", "d", "f")
    with consumer.lock:
        consumer.committed[P0] = 5  # the interim owner, while this consumer's session was lost
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()
    _step_until(loop, lambda: ["f"] in handling.calls)
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    consumer.script.append([_assign(consumer, listener, {P0, P1})])
    loop.poll_once()
    gate.set()
    _step_until(loop, lambda: not len(window))
    for _ in range(3):
        loop.poll_once()
    assert consumer.backwards == []


def test_a_round_from_before_a_lost_membership_holds_nothing_of_the_partition_read_anew():
    """ "x" (offset 0) with the handler when the membership is lost; an interim owner commits 5; P0 comes back anew in
    one poll (read from 5). The round of "x", settled after the rebalance ended, holds "x" again: not held (a hold
    would cap every commit of P0 at 0, below the interim owner's 5, for as long as it lasts)."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "x")
    handling = Handling()
    gate = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x"]:
                assert gate.wait(DEADLINE_SECONDS)
            return [
                HoldRecord("breaker open", time.monotonic() + 3600.0) if n == "x" else _outcome(r)
                for n, r in zip(names, requests, strict=True)
            ]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: handling.calls == [["x"]])
    consumer.add(P0, "a", "b", "c", "d", "f", "g")
    with consumer.lock:
        consumer.committed[P0] = 5
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()  # f, g read from 5: R2
    gate.set()
    _step_until(loop, lambda: not len(window))
    for _ in range(3):
        loop.poll_once()
    assert consumer.backwards == []


def test_a_partition_whose_position_cannot_be_told_keeps_its_holds_and_no_commit_passes_them():
    """ "x" (offset 0) with the handler; a rebalance begins (nothing held: no seek, the position stays at 1) and the
    round holds "x" again meanwhile; P0 is given back, but its position cannot be told (kafka-python's private state
    changed) though the consumer kept it: the hold of "x" is kept ("x" is read from nowhere else), and the commit of
    "y" after it does not pass it."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "x")
    handling = Handling()
    gate = threading.Event()
    broken: set[TopicPartition] = set()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            if names == ["x"]:
                assert gate.wait(DEADLINE_SECONDS)
            return [
                HoldRecord("breaker open", time.monotonic() + 3600.0) if n == "x" else _outcome(r)
                for n, r in zip(names, requests, strict=True)
            ]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None

    def position(p: TopicPartition) -> int:
        if p in broken:
            raise AttributeError("private API changed")
        return consumer.positions[p]

    listener = ForgetRevoked(loop.held, loop._revoked, seek=consumer.seek, position=position, assigned=loop._assigned)
    _step_until(loop, lambda: handling.calls == [["x"]])
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    gate.set()
    _step_until(loop, lambda: not len(window))  # x held again during the rebalance
    broken.add(P0)

    def assign() -> None:
        consumer.rebalancing = False
        listener.on_partitions_assigned({P0, P1})

    consumer.script.append([assign])
    loop.poll_once()
    consumer.add(P0, "y")
    _step_until(loop, lambda: ["y"] in handling.calls and not len(window))
    for _ in range(3):
        loop.poll_once()
    assert consumer.committed.get(P0, 0) == 0, "committed past x, held, never settled, not read again"


def test_an_outage_in_a_round_from_before_a_lost_membership_hands_nothing_back_below_the_interim_owner():
    """ "x" (offset 0) with the handler; the membership is lost, an interim owner commits 5, P0 is read anew from 5.
    Then "x" meets a database outage: it is not handed back (that sought P0 to 0, below the interim owner, and the
    commits went backwards): P0's reader reads on from 5."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "x")
    handling = Handling()
    gate = threading.Event()
    count: dict[str, int] = {}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            out: list[list[Outgoing] | BaseException] = []
            for n, r in zip(names, requests, strict=True):
                count[n] = count.get(n, 0) + 1
                if n == "x" and count[n] == 1:
                    assert gate.wait(DEADLINE_SECONDS)
                    out.append(DependencyUnavailable("catalog away"))
                elif n == "b":
                    out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                else:
                    out.append(_outcome(r))
            return out

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: handling.calls == [["x"]])
    consumer.add(P0, "a", "b", "c", "d", "f", "g")
    with consumer.lock:
        consumer.committed[P0] = 5
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()
    _step_until(loop, lambda: ["f", "g"] in handling.calls)
    gate.set()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and len(window):
        with suppress(RoundInterrupted):  # the outage's interruption, raised as the round settles
            loop.poll_once()
    for _ in range(6):
        with suppress(RoundInterrupted):  # the outage's interruption, raised as the round settles
            loop.poll_once()
    _step_until(loop, lambda: not len(window))
    assert consumer.backwards == []


def test_a_copy_in_a_round_itself_read_anew_is_not_held_again():
    """ "x" with the handler (R1); the membership is lost and P0 read anew: "x" is a copy of R1's in R2. Lost again, an
    interim owner commits 5, P0 read anew from 5. R1 holds "x" again: not held (read anew), and neither is R2's copy
    (R2 is read anew for P0 too: that hold capped P0's commits at 0, below 5)."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "x")
    handling = Handling()
    gate = threading.Event()
    count: dict[str, int] = {}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            out: list[list[Outgoing] | BaseException] = []
            for n, r in zip(names, requests, strict=True):
                count[n] = count.get(n, 0) + 1
                if n == "x" and count[n] == 1:
                    assert gate.wait(DEADLINE_SECONDS)
                    out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                else:
                    out.append(_outcome(r))
            return out

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=4)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: handling.calls == [["x"]])
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()  # x read again from 0: a copy of R1's (R2)
    consumer.add(P0, "a", "b", "c", "d", "f")
    with consumer.lock:
        consumer.committed[P0] = 5
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()
    _step_until(loop, lambda: ["f"] in handling.calls)
    gate.set()
    _step_until(loop, lambda: not len(window))
    for _ in range(4):
        loop.poll_once()
    _step_until(loop, lambda: not len(window))
    assert consumer.backwards == []


def test_a_copy_held_for_an_hour_in_a_round_read_anew_caps_no_commit():
    """ "w" held for an hour, "x" with the handler (R1). A normal rebalance gives P0 back, sought to 0: "w" with the
    handler in R2, "x" a copy of R1's. R1 holds "x" for an hour (P0 given back: kept). Then the membership is lost, an
    interim owner commits 5, P0 is read anew from 5. R2's copy of "x" is not held (its hold kept P0's commits at 1,
    below 5, for the hour)."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "w")
    handling = Handling()
    gates = {"x": threading.Event(), "w2": threading.Event()}
    count: dict[str, int] = {}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            out: list[list[Outgoing] | BaseException] = []
            for n, r in zip(names, requests, strict=True):
                count[n] = count.get(n, 0) + 1
                if n == "w":
                    if count[n] > 1:
                        assert gates["w2"].wait(DEADLINE_SECONDS)
                        out.append(_outcome(r))
                    else:
                        out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                elif n == "x":
                    assert gates["x"].wait(DEADLINE_SECONDS)
                    out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                else:
                    out.append(_outcome(r))
            return out

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=4)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: len(loop.held) == 1)  # w held for an hour
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)
    consumer.script.append([_revoke(consumer, listener)])
    loop.poll_once()
    consumer.script.append([_assign(consumer, listener, {P0, P1})])
    loop.poll_once()
    _step_until(loop, lambda: count.get("w", 0) >= 2)  # R2: w with the handler, x a copy
    gates["x"].set()
    _step_until(loop, lambda: len(window) == 1)  # R1 sent (x held an hour) and confirmed
    consumer.add(P0, "a", "b", "c", "f")
    with consumer.lock:
        consumer.committed[P0] = 5
    consumer.script.append([_lost_and_rejoined(consumer, listener)])
    loop.poll_once()
    _step_until(loop, lambda: ["f"] in handling.calls)
    gates["w2"].set()
    _step_until(loop, lambda: not len(window))
    for _ in range(4):
        loop.poll_once()
    _step_until(loop, lambda: not len(window))
    assert consumer.backwards == []
    assert len(loop.held) == 0


@pytest.mark.parametrize("read_anew_by", ["a lost membership", "two rebalances moving it away and back"])
def test_an_outage_in_a_round_whose_partition_was_read_anew_never_seeks_past_records_read_anew(read_anew_by: str):
    """ "h0"-"h2" (offsets 0-2) held for an hour, "x" (3) with the handler (R1). The membership is lost (the holds
    forgotten, no seek), or two normal rebalances in one poll move P0 away and back, and P0 is assigned anew, read
    from the committed offset 0; the poll of the rejoin returns nothing of it yet (kafka-python fetches the committed
    offset first). "x" meets an outage: not handed back (that sought P0 forward to 3, past "h0"-"h2", never read
    again, and a commit of 4 passed them: lost)."""
    consumer, producer = Moving(), Producer()
    consumer.add(P0, "h0", "h1", "h2")
    handling = Handling()
    gate = threading.Event()
    count: dict[str, int] = {}

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with handling.call(requests) as names:
            out: list[list[Outgoing] | BaseException] = []
            for n, r in zip(names, requests, strict=True):
                count[n] = count.get(n, 0) + 1
                if n.startswith("h") and count[n] == 1:
                    out.append(HoldRecord("breaker open", time.monotonic() + 3600.0))
                elif n == "x" and count[n] == 1:
                    assert gate.wait(DEADLINE_SECONDS)
                    out.append(DependencyUnavailable("catalog away"))
                else:
                    out.append(_outcome(r))
            return out

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=3)
    window = loop._window
    assert window is not None
    listener = _listener(loop, consumer)
    _step_until(loop, lambda: len(loop.held) == 3)
    consumer.add(P0, "x")
    _step_until(loop, lambda: ["x"] in handling.calls)

    def lost_rejoined_nothing_fetched_yet() -> None:
        if read_anew_by == "a lost membership":
            _lost_and_rejoined(consumer, listener)()
        else:
            _revoke(consumer, listener)()
            _assign(consumer, listener, {P1})()
            _revoke(consumer, listener)()
            _assign(consumer, listener, {P0, P1})()
        consumer.rebalancing = True  # this poll returns nothing yet

    consumer.script.append([lost_rejoined_nothing_fetched_yet])
    loop.poll_once()
    gate.set()
    deadline = time.monotonic() + DEADLINE_SECONDS
    raised = False
    while time.monotonic() < deadline and not raised:  # the fetch after the rejoin not back yet
        with suppress(RoundInterrupted):  # the outage's interruption, raised as the round settles
            loop.poll_once()
            raised = True
    consumer.rebalancing = False
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and len(window):
        with suppress(RoundInterrupted):  # the outage's interruption, raised as the round settles
            loop.poll_once()
    for _ in range(5):
        with suppress(RoundInterrupted):  # the outage's interruption, raised as the round settles
            loop.poll_once()
    _step_until(loop, lambda: not len(window))
    assert consumer.committed.get(P0, 0) == 0 or count.get("h0", 0) >= 2, "committed past h0-h2, never settled"
