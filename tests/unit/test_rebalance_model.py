"""A model of the consumer loop under rebalances: hypothesis drives ONE ``ConsumerLoop`` (``rounds_in_flight`` 2 or
3, or (session 48) 1: one round at a time, the default, as the dispatcher runs it by default) over a stand-in of
kafka-python's consumer and its group, through random interleavings of records appended, loop turns, round handler
calls finishing in any order with any result per record (its outcome, held due now / shortly / for an hour, a
database outage, a rejection), the broker refusing acknowledgements for a while or slow to give them, time passing,
and rebalances: revoked and assigned in one poll or polls apart, a partition taken away (to an interim owner, which
reads from the committed offset and commits what it handled) and given back later, the membership lost (after the
session expired unnoticed, the interim owner committing meanwhile, or not), a partition whose fetch is late; and
(session 47) 2 to 4 partitions, commits answered late (after later polls, after a rebalance) or refused with the group
coordinator away, the held records' bound reached (every partition paused), a position kafka-python's state cannot
tell, a handler call that raises (an outage or a bug) or answers for the wrong number of records, and a stop (SIGTERM:
``ConsumerLoop.run`` with ``stopping`` set) with rounds in flight, the service's next consumer then joining the group.

The stand-in behaves as kafka-python 3.0 does where the loop depends on it (``kafka/consumer/subscription_state.py``,
``kafka/coordinator/consumer.py``, ``kafka/consumer/group.py``): the rebalance listener is called inside a poll (eager
protocol: every partition revoked as the join begins, the whole new assignment given as it ends); a partition assigned
again to the same consumer keeps its position, one new to it, or dropped (taken away, or lost with the membership), has
none and is read from the committed offset; commits are refused between a revocation and the next assignment
(``RebalanceInProgressError``) and after the session expired (``CommitFailedError``); ``seek`` of a partition not
assigned raises ``ValueError``; the subscription state's ``position`` of one not assigned raises; ``commit_async``
answers through its callback at a later poll or commit, never at once, and a commit sent lands in the generation it was
sent in or is refused; a partition assigned again keeps its paused flag, a new one is not paused; ``close`` revokes (or,
the session expired, loses) the partitions before leaving the group.

Checked at every commit the group accepts, and after every step:

1. no commit past a record not settled: its outcome produced and acknowledged, or a dead letter decided for it
   (one that cannot be produced is given up and skipped: the documented exception), by this loop or the interim
   owner (a crash right then would lose it);
2. no commit of a partition this consumer is not assigned at that moment;
3. no commit below the group's committed offset;
5. no record handed to the handler while an earlier call still has it.

And at the end (4, liveness): once every hold is due, the broker acknowledges and the group is stable with both
partitions here (commits landing at once, the coordinator there), the loop, turned up to a bound, settles every
record and commits each partition to its end.

One round at a time, the handler is called on the loop's thread and answers at once: a ``release`` step says what the
next call answers (queued; "ok" when none is), and a ``stop`` step's SIGTERM arrives during the next turn's handler
call (the handler answering the stop's fates), or between turns when that turn calls none.

Deterministic: with rounds in flight, every handler call waits on a gate the script releases (a turn that would wait
for a round's results releases it with outcomes, and says so); after each step the test waits, with a deadline, until
every round started is with the handler and every call released has returned. Time is the model's clock (the loop's
``time.monotonic``); a turn with rounds in flight polls at once instead of waiting in real time for them to move on
(``IN_FLIGHT_WAIT_MAX_MS`` 0: the wait only delays a turn, tests/unit/test_in_flight_wait.py has it). A failure prints
the script (hypothesis' steps, and notes of what each did).

What the model found on a455514 (pre-existing defects, fixed in session 46) is kept as plain tests at the end.

Not modelled: the cooperative protocol, priority topics (their pauses), more than one topic, a record handler (one by
one: ``handler``), a stop that a fatal error ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from functools import partial
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    CommitFailedError,
    CoordinatorNotAvailableError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from kafka.structs import TopicPartition

import shared.kafka.loop as loop_module
from shared.errors import InvalidInput
from shared.events import RunRequested
from shared.kafka import ConsumerLoop, Outgoing, value_decoder
from shared.kafka.held_records import HoldRecord
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable
from tests.fuzz.strategies import FUZZ, budgets
from tests.unit import test_rounds_in_flight as stand_ins

TOPIC = "exports.run-requests"
OUTCOMES = "exports.run-events"
DEAD_LETTERS = "exports.dead-letters"
#: The topic's partitions: a script has 2 (the default), 3 or 4 of them (a partition number in a step is taken modulo).
PARTITIONS = tuple(TopicPartition(TOPIC, number) for number in range(4))
P0, P1 = PARTITIONS[:2]
#: Every wait on another thread ends within this (a wait that does not is a failure, never a hang).
DEADLINE_SECONDS = 20.0
#: The records a poll returns at most (the held records due count in a round's size too).
MAX_POLL_RECORDS = 3
#: Turns the loop gets, at the end, to settle and commit everything (each turn polls or moves a round on).
LIVENESS_TURNS = 400
#: What a handler call answers for each of its records (cycled through when it has more).
FATES = ("ok", "hold_due", "hold_short", "hold_long", "outage", "reject")
#: What a handler call may do instead, for all its records: raise (each record dead-lettered with it), raise an outage
#: (the round handed back), answer for one record fewer (each dead-lettered).
CALL_FAILURES = ("raise", "raise_outage", "wrong_count")
#: Examples in CI, and in the long form (``make fuzz``), per mode: rounds in flight (2, 3) and one round at a time.
CASES = budgets(400, 5_000)
ONE_ROUND_CASES = budgets(300, 5_000)
#: What one round at a time, the next handler calls answer at most (``release`` steps queue them).
QUEUED_ANSWERS = 3


def note(text: str) -> None:
    """A line of the failing script's story (nothing outside a hypothesis example: the plain tests)."""
    with suppress(InvalidArgument):
        hypothesis_note(text)


def _name(partition: TopicPartition, offset: int) -> str:
    return f"{partition.partition}:{offset}"


def record_name(request: RunRequested) -> str:
    """The model's name ("P:O") of the record a request was read from: records carry it as a definition name
    ("rP-O"), since run requests name definitions by the catalog's rule (lowercase letters, digits, dashes)."""
    return request.definition.removeprefix("r").replace("-", ":")


def _request(name: str) -> RunRequested:
    """The run request the model appends as record ``name`` ("P:O")."""
    return RunRequested(definition="r" + name.replace(":", "-"))


def _key(name: str) -> tuple[TopicPartition, int]:
    partition, offset = name.split(":")
    return TopicPartition(TOPIC, int(partition)), int(offset)


class Clock:
    """The model's time: the loop's ``time.monotonic`` (held records fall due as the script says)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Acknowledgement(stand_ins.Acknowledgement):
    """The broker's answer to one record: at once, or (the broker slow) once ``answer`` is set. Nothing waits on it:
    the loop asks ``is_done`` and flushes before it waits, and a flush answers (see :meth:`Producer.flush`)."""

    @property
    def acknowledged(self) -> bool:
        return self.is_done and self.error is None

    def get(self, timeout: float | None = None) -> None:
        if self.answer is not None and not self.answer.is_set():
            note("    the loop waits for an acknowledgement: the broker answers")
            self.answer.set()
        if self.error is not None:
            raise self.error


class Producer:
    """Answers every record: acknowledged, or while ``refusing`` failed (the broker away); while ``slow``, the answers
    wait for the script's ``broker answers`` step (or a flush). Remembers every record a dead letter was decided for
    (its letter attempted, acknowledged or not)."""

    def __init__(self) -> None:
        self.refusing = False
        self.slow = False
        self._answer: threading.Event | None = None
        self.answers: dict[tuple[TopicPartition, int], list[Acknowledgement]] = {}
        self.lettered: set[tuple[TopicPartition, int]] = set()

    def send(self, topic: str, *, key: Any = None, value: bytes = b"", headers: Any = None) -> Acknowledgement:
        if topic == DEAD_LETTERS:
            letter = orjson.loads(value)
            self.lettered.add((TopicPartition(TOPIC, letter["source_partition"]), letter["source_offset"]))
        if self.slow and self._answer is None:
            self._answer = threading.Event()
        answer = self._answer if self.slow else None
        error = KafkaTimeoutError("the broker is unreachable") if self.refusing else None
        acknowledgement = Acknowledgement(error, answer)
        if topic == OUTCOMES:
            self.answers.setdefault(_key(value.decode()), []).append(acknowledgement)
        return acknowledgement

    def acknowledged(self, key: tuple[TopicPartition, int]) -> bool:
        """Whether an outcome of the record was acknowledged."""
        return any(answer.acknowledged for answer in self.answers.get(key, ()))

    def answer(self) -> None:
        """The broker answers every record sent so far."""
        if self._answer is not None:
            self._answer.set()
            self._answer = None

    def flush(self, timeout: float | None = None) -> None:
        self.answer()

    def close(self, timeout: float | None = None) -> None:
        pass


class Group:
    """A kafka-python consumer in its group (2 to 4 partitions), an interim owner for what the group gives elsewhere.

    Rebalance steps are queued (``script``) and run as the next poll begins, calling the listener the loop
    subscribed with, as kafka-python's coordinator does inside ``poll``. Positions: None is "none, read from the
    committed offset" (resolved as the next fetch begins, as kafka-python resets a position before fetching).

    Commits as kafka-python 3.0 makes them (``coordinator/consumer.py``): ``commit_async`` never answers at once: its
    answer is queued and its callback called as the next poll begins (``_invoke_completed_offset_commit_callbacks``),
    or at the next commit; a commit made while the group rebalances, after the session expired, or with the
    coordinator away fails so. While ``commits_slow``, a commit sent is in flight until the script lets it land (or the
    connection carries something after it: the JoinGroup of the next rebalance, a commit waited for, the close): the
    broker then takes it if the generation it was sent in is still the group's (an expired session, or a rebalance
    ended, is a new generation: ``IllegalGenerationError``, a ``CommitFailedError``)."""

    def __init__(self, settled: Callable[[tuple[TopicPartition, int]], bool], partitions: int = 2) -> None:
        self.settled = settled
        self.all = frozenset(PARTITIONS[:partitions])
        self.log: dict[TopicPartition, list[ConsumerRecord]] = {p: [] for p in self.all}
        self.positions: dict[TopicPartition, int | None] = dict.fromkeys(self.all)
        self.committed: dict[TopicPartition, int] = {}
        self.owned: set[TopicPartition] = set(self.all)
        #: Between a revocation (or a lost membership) and the next assignment: commits refused, nothing fetched.
        self.rebalancing = False
        #: The session expired, unnoticed yet: the group gave the partitions to the interim owner; commits refused.
        self.expired = False
        #: The group's generation: a new one as a rebalance ends, or as the session expires (the member removed).
        self.generation = 0
        #: The partitions the interim owner (another consumer of the group) has.
        self.interim: set[TopicPartition] = set()
        self.interim_settled: set[tuple[TopicPartition, int]] = set()
        self.not_fetched_yet: set[TopicPartition] = set()
        #: Partitions whose position the subscription state cannot tell (raises: kafka-python's private API changed).
        self.unreadable: set[TopicPartition] = set()
        #: Partitions paused (kafka-python keeps the flag of a partition assigned again; a new one is not paused).
        self.paused_partitions: set[TopicPartition] = set()
        #: Commits sent, not landed yet (while ``commits_slow``): offsets, generation, callback.
        self.commits_slow = False
        self.in_flight: list[tuple[dict[TopicPartition, Any], int, Callable[..., None]]] = []
        #: Commits answered, their callbacks called as the next poll (or commit) begins.
        self.answers: list[tuple[Callable[..., None], dict[TopicPartition, Any], Any]] = []
        #: The coordinator away (unknown, moving): every commit fails (retriable).
        self.coordinator_away = False
        self.script: list[Callable[[], None]] = []
        self.listener: Any = None
        self.violations: list[str] = []
        self.lock = threading.Lock()
        #: Small polls: more rounds, so more of them in flight at once.
        self.config: dict[str, Any] = {"group_id": "model", "max_poll_records": MAX_POLL_RECORDS}

    # What the loop calls.

    def subscription(self) -> list[str]:
        return [TOPIC]

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        self.listener = listener

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self._call_back()
        steps, self.script = self.script, []
        for step in steps:
            step()
        if self.rebalancing:
            return {}
        with self.lock:
            left = max_records or MAX_POLL_RECORDS
            polled: dict[TopicPartition, list[Any]] = {}
            for partition in sorted(self.all):
                if partition not in self.owned:
                    continue
                start = self.positions[partition]
                if start is None:  # reset from the committed offset before fetching
                    start = self.positions[partition] = self.committed.get(partition, 0)
                if partition in self.not_fetched_yet or partition in self.paused_partitions:
                    continue
                records = self.log[partition][start : start + left]
                if records:
                    polled[partition] = records
                    self.positions[partition] = start + len(records)
                    left -= len(records)
        return polled

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self.owned:
            raise ValueError("Unassigned partition")
        self.positions[partition] = offset

    def _refusal(self) -> KafkaError | None:
        """Why a commit sent now fails (kafka-python: ``generation_if_stable`` None, or no coordinator)."""
        if self.rebalancing:
            return RebalanceInProgressError("the group is rebalancing")
        if self.expired:
            return CommitFailedError("the group has moved on: this member's session expired")
        if self.coordinator_away:
            return CoordinatorNotAvailableError("the group coordinator is away")
        return None

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self._call_back()
        self.land()  # sent before it on the same connection: answered first
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._apply(offsets)

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Callable[..., None]) -> None:
        self._call_back()
        refusal = self._refusal()
        if refusal is not None:
            self.answers.append((callback, offsets, refusal))
            return
        for partition, meta in offsets.items():
            self._check_settled(partition, meta.offset)  # sent: a crash once it lands loses what it passes
        self.in_flight.append((offsets, self.generation, callback))
        if not self.commits_slow:
            self.land()

    def land(self) -> None:
        """The commits in flight reach the broker, in the order sent, and are answered."""
        landing, self.in_flight = self.in_flight, []
        for offsets, generation, callback in landing:
            if generation != self.generation:
                self.answers.append((callback, offsets, CommitFailedError("IllegalGenerationError")))
                continue
            self._apply(offsets)
            self.answers.append((callback, offsets, None))

    def _call_back(self) -> None:
        answers, self.answers = self.answers, []
        for callback, offsets, answer in answers:
            callback(offsets, answer)

    def _apply(self, offsets: dict[TopicPartition, Any]) -> None:
        done = {partition: meta.offset for partition, meta in offsets.items()}
        for partition, offset in done.items():
            self._check_commit(partition, offset)
        self.committed.update(done)

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    @property
    def _subscription(self) -> SimpleNamespace:
        """kafka-python's subscription state, as far as the loop reads it (``fetch_position``)."""

        def position(partition: TopicPartition) -> SimpleNamespace | None:
            if partition not in self.owned:
                raise KeyError(partition)  # kafka-python: assignment[partition]
            if partition in self.unreadable:
                raise AttributeError("'TopicPartitionState' object has no attribute 'position'")
            at = self.positions[partition]
            return None if at is None else SimpleNamespace(offset=at)

        return SimpleNamespace(position=position)

    def highwater(self, partition: TopicPartition) -> None:
        return None  # no fetch answered it: no lag recorded

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def pause(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            if partition not in self.owned:
                raise KeyError(partition)  # kafka-python: assignment[partition]
            self.paused_partitions.add(partition)

    def resume(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            if partition not in self.owned:
                raise KeyError(partition)
            self.paused_partitions.discard(partition)

    def close(self) -> None:
        """The consumer leaves the group (kafka-python 3.0's ``_on_close_prepare_async``: its partitions revoked, or
        lost after the session expired, then LeaveGroup): the commits in flight land first; the group gives every
        partition to the interim owner until the service's next consumer joins."""
        self.land()
        if self.owned:
            if self.expired:
                self.listener.on_partitions_lost(set(self.owned))
            else:
                self.listener.on_partitions_revoked(set(self.owned))
        self.listener = None
        self.owned = set()
        self.positions = dict.fromkeys(self.all)
        self.paused_partitions = set()
        self.expired = False
        self.rebalancing = True
        self.generation += 1
        self.interim = set(self.all)

    # The broker's side.

    def _check_settled(self, partition: TopicPartition, offset: int) -> None:
        committed = self.committed.get(partition, 0)
        lost = [o for o in range(committed, offset) if not self.settled((partition, o))]
        if lost:
            names = ", ".join(_name(partition, o) for o in lost)
            self.violations.append(f"(1) committed {partition.partition}@{offset} past records not settled: {names}")

    def _check_commit(self, partition: TopicPartition, offset: int) -> None:
        committed = self.committed.get(partition, 0)
        if partition not in self.owned:
            self.violations.append(f"(2) committed {partition.partition}@{offset}, a partition not assigned here")
        if offset < committed:
            self.violations.append(f"(3) committed {partition.partition}@{offset} below the group's {committed}")
        self._check_settled(partition, offset)

    def append(self, partition: TopicPartition, count: int) -> list[str]:
        with self.lock:
            names = []
            for _ in range(count):
                offset = len(self.log[partition])
                names.append(_name(partition, offset))
                value = _request(names[-1]).to_bytes()
                self.log[partition].append(
                    ConsumerRecord(TOPIC, partition.partition, None, offset, 0, 0, None, value, [], None, 0, 0, 0)
                )
            return names

    def revoke(self) -> None:
        """A rebalance begins (eager): every partition revoked; their positions kept until the assignment. After the
        session expired, the partitions are lost instead (kafka-python: the generation is gone). The commits in
        flight land first (sent before the JoinGroup, on the same connection)."""
        if self.expired:
            self.lose()
            return
        if self.rebalancing:
            return
        self.land()
        self.interim = set()  # the other member revokes too
        self.listener.on_partitions_revoked(set(self.owned))
        self.rebalancing = True

    def assign(self, partitions: frozenset[TopicPartition]) -> None:
        """The rebalance ends: ``partitions`` here (those kept keep their position), the rest to the interim owner."""
        if not self.rebalancing:
            return
        for partition in self.all:
            if partition not in partitions or partition not in self.owned:
                self.positions[partition] = None  # dropped, or new here: read from the committed offset
        self.paused_partitions &= partitions & self.owned
        self.owned = set(partitions)
        self.interim = set(self.all - partitions)
        self.rebalancing = self.expired = False
        self.generation += 1
        self.listener.on_partitions_assigned(set(partitions))

    def expire(self) -> None:
        """The session expires unnoticed: the group gives the partitions to the interim owner."""
        if self.rebalancing or self.expired or not self.owned:
            return
        self.expired = True
        self.generation += 1
        self.interim = set(self.all)

    def lose(self) -> None:
        """The consumer learns its membership is lost: its partitions lost (positions dropped), rejoining."""
        if not self.expired:
            return
        self.listener.on_partitions_lost(set(self.owned))
        for partition in self.owned:
            self.positions[partition] = None
        self.owned = set()
        self.paused_partitions = set()
        self.expired = False
        self.rebalancing = True

    def interim_handles(self, partition: TopicPartition, count: int) -> None:
        """The interim owner reads ``count`` records from the committed offset, handles them and commits."""
        if partition not in self.interim:
            return
        start = self.committed.get(partition, 0)
        end = min(len(self.log[partition]), start + count)
        self.interim_settled.update((partition, offset) for offset in range(start, end))
        self.committed[partition] = end


def _flag(partitions: set[TopicPartition], partition: TopicPartition, on: bool) -> None:
    """Put ``partition`` in ``partitions`` (``on``) or take it out."""
    if on:
        partitions.add(partition)
    else:
        partitions.discard(partition)


class Call:
    """One call of the round handler: its records, the gate it waits on, what it answers."""

    def __init__(self, number: int, requests: Sequence[RunRequested]) -> None:
        self.number = number
        self.requests = requests
        self.names = [record_name(request) for request in requests]
        self.gate = threading.Event()
        self.fates: Sequence[str] = ("ok",)
        self.returned = threading.Event()

    def __repr__(self) -> str:
        return f"call#{self.number}[{', '.join(self.names)}]"


class Gated:
    """A round's results as the loop sees them: a turn that would wait for results not there yet releases the call
    with outcomes (the script could not go on otherwise), and says so."""

    def __init__(self, future: Future[Any], release: Callable[[], None]) -> None:
        self.future = future
        self.release = release

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Any:
        if not self.future.done():
            self.release()
        return self.future.result(timeout=DEADLINE_SECONDS)


class Model:
    """The loop, its handler, the producer and the group, driven step by step."""

    def __init__(self, rounds_in_flight: int, clock: Clock, partitions: int = 2) -> None:
        self.clock = clock
        self.clock.now = Clock().now
        self.rounds_in_flight = rounds_in_flight
        self.producer = Producer()
        self.group = Group(self._settled, partitions)
        self.calls: list[Call] = []
        self.changed = threading.Condition()
        self.in_hand: Counter[str] = Counter()
        self.twice_at_once: list[str] = []
        self.final = False
        #: One round at a time: what the next handler calls answer (``release``), and the fates of a stop's call.
        self.next_answers: list[Sequence[str]] = []
        self.stop_fates: Sequence[str] | None = None
        #: The loops stopped (a service restarted), and the one running.
        self.stopped: list[ConsumerLoop[Any]] = []
        self.loop = self._new_loop()

    def _new_loop(self) -> ConsumerLoop[Any]:
        return _loop(self.group, self.producer, self._handle_round, self.rounds_in_flight)

    # The handler, on the round window's threads.

    def _handle_round(self, requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        with self.changed:
            call = Call(len(self.calls) + 1, requests)
            self.calls.append(call)
            self.twice_at_once.extend(name for name in call.names if self.in_hand[name])
            self.in_hand.update(call.names)
            if self.rounds_in_flight == 1:  # on the loop's thread: answers at once
                self._answer_at_once(call)
            if self.final:
                call.gate.set()
            self.changed.notify_all()
        try:
            if not call.gate.wait(DEADLINE_SECONDS):
                self.group.violations.append(f"{call} never released (a model error)")
            fates = self._fates(call)
            if fates[0] == "raise":
                raise RuntimeError("the handler's bug")
            if fates[0] == "raise_outage":
                raise DependencyUnavailable("the member database is unreachable")
            if fates[0] == "wrong_count":
                return [self._result("ok", name) for name in call.names[1:]]
            return [self._result(fate, name) for fate, name in zip(fates, call.names, strict=True)]
        finally:
            with self.changed:
                self.in_hand.subtract(call.names)
                call.returned.set()
                self.changed.notify_all()

    def _answer_at_once(self, call: Call) -> None:
        """One round at a time: ``call`` answers what the script queued for it (a stop's fates, the SIGTERM arriving
        during the call), else "ok"."""
        if self.stop_fates is not None:
            call.fates, self.stop_fates = self.stop_fates, None
            self.loop.stopping.set()
        elif self.next_answers:
            call.fates = self.next_answers.pop(0)
        note(f"    {call} answers {self._fates_of(call, call.fates)}")
        call.gate.set()

    def _fates(self, call: Call) -> list[str]:
        if self.final:
            return ["ok"] * len(call.names)
        if call.fates[0] in CALL_FAILURES:
            return [call.fates[0]] * len(call.names)
        return [call.fates[i % len(call.fates)] for i in range(len(call.names))]

    def _result(self, fate: str, name: str) -> list[Outgoing] | BaseException:
        now = self.clock.now
        if fate == "hold_due":
            return HoldRecord("not begun by the round's deadline", now)
        if fate == "hold_short":
            return HoldRecord("the partner's breaker is open", now + 1.0)
        if fate == "hold_long":
            return HoldRecord("the partner's breaker is open", now + 3600.0)
        if fate == "outage":
            return DependencyUnavailable("the catalog is unreachable")
        if fate == "reject":
            return InvalidInput("the partner refuses this batch")
        return [Outgoing(OUTCOMES, name, name.encode())]

    # What the model knows.

    def _settled(self, key: tuple[TopicPartition, int]) -> bool:
        return self.producer.acknowledged(key) or key in self.producer.lettered or key in self.group.interim_settled

    def _open_calls(self) -> list[Call]:
        return [call for call in self.calls if not call.gate.is_set()]

    def _round_of(self, call: Call) -> Any:
        return next((pending for pending in self.loop._window or () if pending.events is call.requests), None)

    def _release(self, call: Call, fates: Sequence[str]) -> None:
        """Let ``call`` return ``fates``, and wait until the loop can see its results."""
        pending = self._round_of(call)
        call.fates = fates
        call.gate.set()
        assert call.returned.wait(DEADLINE_SECONDS), f"{call} did not return"
        results = getattr(pending, "results", None)
        if isinstance(results, Gated):
            results.future.exception(timeout=DEADLINE_SECONDS)

    def _settle_threads(self) -> None:
        """Wait until every round started is with the handler (or done, when it had nothing to hand it), and gate
        the results of each new round (see :class:`Gated`)."""
        for pending in self.loop._window or ():
            results: Any = pending.results  # a Future, or Gated once seen here
            if results is None:
                continue
            future = results.future if isinstance(results, Gated) else results
            if pending.events is not None:
                with self.changed:
                    assert self.changed.wait_for(partial(self._call_of, pending), DEADLINE_SECONDS), (
                        "a round never reached the handler"
                    )
            call = self._call_of(pending)
            if call is None or call.gate.is_set():  # nothing for the handler, or released: its results are there
                future.exception(timeout=DEADLINE_SECONDS)
            if not isinstance(results, Gated):
                # The loop only asks done() and result(): what it asks is seen here (a forced release).
                pending.results = Gated(future, self._forced(pending))  # type: ignore[assignment]

    def _call_of(self, pending: Any) -> Call | None:
        return next((call for call in self.calls if call.requests is pending.events), None)

    def _forced(self, pending: Any) -> Callable[[], None]:
        def release() -> None:
            call = self._call_of(pending)
            assert call is not None, "a round with nothing for the handler is done at once"
            note(f"    the turn waits for {call}: released with outcomes")
            self._release(call, ("ok",))

        return release

    def _turn(self) -> None:
        try:
            self.loop.poll_once()
        except (RoundInterrupted, KafkaTimeoutError) as exc:  # the service backs off, then turns again
            note(f"    turn interrupted: {type(exc).__name__}")
        self._settle_threads()

    # The steps (see :data:`STEPS`).

    def _partition(self, number: int) -> TopicPartition:
        return PARTITIONS[number % len(self.group.all)]

    def _partitions(self, numbers: Sequence[int]) -> frozenset[TopicPartition]:
        return frozenset(self._partition(number) for number in numbers)

    def run(self, step: tuple[Any, ...]) -> None:
        """Take one step of a script, and note what it did."""
        kind, *args = step
        group = self.group
        if kind == "append":
            note(f"{step}: appended {group.append(self._partition(args[0]), args[1])}")
            return
        if kind == "stop":
            self._stop(args[0], self._partitions(args[1]))
            return
        if kind == "turn":
            note(f"{step}")
            self._turn()
        elif kind == "release":
            if self.rounds_in_flight == 1:
                if len(self.next_answers) < QUEUED_ANSWERS:
                    self.next_answers.append(args[1])
                note(f"{step}: the next call answers {args[1]}")
                return
            calls = self._open_calls()
            if not calls:
                return
            call = calls[args[0] % len(calls)]
            note(f"{step}: {call} answers {self._fates_of(call, args[1])}")
            self._release(call, args[1])
            return
        elif kind == "time passes":
            self.clock.now += 2.0  # short holds fall due
        elif kind == "broker refuses":
            self.producer.refusing = args[0]
        elif kind == "broker slow":
            self.producer.slow = args[0]
        elif kind == "broker answers":
            self.producer.answer()
        elif kind == "fetch late":
            _flag(group.not_fetched_yet, self._partition(args[0]), args[1])
        elif kind == "rebalance begins":
            group.script.append(group.revoke)
        elif kind == "rebalance ends":
            partitions = self._partitions(args[0])
            group.script.append(lambda: group.assign(partitions))
        elif kind == "rebalance":  # begun and ended within one poll
            partitions = self._partitions(args[0])
            group.script.extend([group.revoke, lambda: group.assign(partitions)])
        elif kind == "membership lost and rejoined":  # the session expired, learnt and assigned anew within one poll
            partitions = self._partitions(args[0])
            group.script.extend([group.expire, group.lose, lambda: group.assign(partitions)])
        elif kind == "session expires":
            group.script.append(group.expire)
        elif kind == "membership lost":
            group.script.append(group.lose)
        elif kind == "interim owner handles":
            group.script.append(lambda: group.interim_handles(self._partition(args[0]), args[1]))
        elif kind == "position unreadable":
            _flag(group.unreadable, self._partition(args[0]), args[1])
        elif kind == "commits slow":
            group.commits_slow = args[0]
        elif kind == "commits land":
            group.land()
        elif kind == "coordinator away":
            group.coordinator_away = args[0]
        elif kind == "held bound":
            self.loop.held.max_records = args[0]
        if kind != "turn":
            note(f"{step}")

    def _stop(self, fates: Sequence[str], partitions: frozenset[TopicPartition]) -> None:
        """SIGTERM (the services' ``stopping`` set): the handler answers ``fates`` for what it has (the dispatcher's
        batches not begun: ``Stopping``, an outage), the loop settles its rounds in flight, commits and closes the
        consumer (``ConsumerLoop.run``); the service's next consumer joins and is given ``partitions`` at its first
        poll (the rest: the interim owner's)."""
        loop = self.loop
        note(f"('stop', {tuple(fates)}, {sorted(p.partition for p in partitions)}): the service stops")
        if self.rounds_in_flight == 1:  # during the next turn's handler call, if it calls the handler
            self.stop_fates = fates
            self._turn()
            self.stop_fates = None
        loop.stopping.set()
        for call in self._open_calls():
            note(f"    {call} answers {self._fates_of(call, fates)}")
            self._release(call, fates)
        loop.run()  # stopping: settles the rounds in flight, commits, closes
        self.stopped.append(loop)
        self.check()
        self.loop = self._new_loop()
        group = self.group
        group.script.append(lambda: group.assign(partitions))

    @staticmethod
    def _fates_of(call: Call, fates: Sequence[str]) -> list[str]:
        return [f"{name}: {fates[i % len(fates)]}" for i, name in enumerate(call.names)]

    # The promises.

    def check(self) -> None:
        """(1), (2), (3) as the group accepted each commit, (5) as the handler was called."""
        assert not self.group.violations, self.group.violations
        assert not self.twice_at_once, f"(5) handed to the handler while an earlier call had them: {self.twice_at_once}"

    def close(self) -> None:
        """Let every handler call return and the round window's threads end."""
        self.final = True
        for call in self.calls:
            call.gate.set()
        for loop in (*self.stopped, self.loop):
            if loop._window is not None:
                loop._window.close()

    def everything_settles(self) -> None:
        """(4) The script over: holds due, the broker acknowledging, the group stable with both partitions here."""
        self.final = True
        for call in self._open_calls():
            self._release(call, ("ok",))
        self.producer.refusing = self.producer.slow = False
        self.producer.answer()
        group = self.group
        group.not_fetched_yet.clear()
        group.unreadable.clear()
        group.commits_slow = group.coordinator_away = False
        group.land()
        self.clock.now += 1e6
        group.script.append(group.lose)
        group.script.append(lambda: group.revoke() if group.owned != group.all or group.interim else None)
        group.script.append(lambda: group.assign(group.all))

        def done() -> bool:
            return not len(self.loop._window or ()) and all(
                group.committed.get(p, 0) == len(group.log[p]) for p in group.all
            )

        for _ in range(LIVENESS_TURNS):
            if done():
                break
            self._turn()
            assert not group.violations, group.violations
        assert done(), (
            f"(4) not everything settled: committed {dict(group.committed)}, ends "
            f"{ {p.partition: len(group.log[p]) for p in sorted(group.all)} }, held {len(self.loop.held)}, "
            f"rounds in flight {len(self.loop._window or ())}"
        )


#: What a call answers, per record (cycled through), or for all of them (:data:`CALL_FAILURES`).
ANSWERS = st.one_of(
    st.lists(st.sampled_from(FATES), min_size=1, max_size=3).map(tuple),
    st.sampled_from(CALL_FAILURES).map(lambda failure: (failure,)),
)
#: A partition by number (modulo the script's partitions).
PARTITION = st.sampled_from([0, 1, 2, 3])
#: The partitions a rebalance assigns this consumer (the rest: the interim owner's), by number (modulo).
ASSIGNMENTS = st.sampled_from([(0, 1, 2, 3), (0,), (1,), (), (0, 2), (1, 2, 3)])
#: The steps of a script by kind: ``(kind, *arguments)``; partitions by number. A rebalance step is queued and runs as
#: the next poll begins (so several steps before a turn happen in one poll: revoked and assigned at once, say).
STEPS = {
    "append": st.tuples(st.just("append"), PARTITION, st.integers(1, 3)),
    "turn": st.tuples(st.just("turn")),
    "release": st.tuples(st.just("release"), st.integers(0, 2), ANSWERS),
    "time passes": st.tuples(st.just("time passes")),
    "broker refuses": st.tuples(st.just("broker refuses"), st.booleans()),
    "broker slow": st.tuples(st.just("broker slow"), st.booleans()),
    "broker answers": st.tuples(st.just("broker answers")),
    "fetch late": st.tuples(st.just("fetch late"), PARTITION, st.booleans()),
    "rebalance begins": st.tuples(st.just("rebalance begins")),
    "rebalance ends": st.tuples(st.just("rebalance ends"), ASSIGNMENTS),
    "rebalance": st.tuples(st.just("rebalance"), ASSIGNMENTS),
    "membership lost and rejoined": st.tuples(st.just("membership lost and rejoined"), ASSIGNMENTS),
    "session expires": st.tuples(st.just("session expires")),
    "membership lost": st.tuples(st.just("membership lost")),
    "interim owner handles": st.tuples(st.just("interim owner handles"), PARTITION, st.integers(1, 3)),
    # kafka-python's commit answers: late (after later polls, a rebalance), refused with the coordinator away.
    "commits slow": st.tuples(st.just("commits slow"), st.booleans()),
    "commits land": st.tuples(st.just("commits land")),
    "coordinator away": st.tuples(st.just("coordinator away"), st.booleans()),
    # kafka-python's private state cannot tell a partition's position (raises).
    "position unreadable": st.tuples(st.just("position unreadable"), PARTITION, st.booleans()),
    # The held records' bound (every partition paused while it is reached; 10,000 in the services).
    "held bound": st.tuples(st.just("held bound"), st.sampled_from([1, 2, 4, 10_000])),
    # SIGTERM with rounds in flight, the service's next consumer given these partitions.
    "stop": st.tuples(st.just("stop"), ANSWERS, ASSIGNMENTS),
}
#: Steps every script takes, about half of its steps (a turn twice as often as the others).
ALWAYS = ("append", "turn", "turn", "release")
#: The other kinds, in families drawn together (a rebalance over several polls needs its beginning and its end; a
#: commit in flight, its landing; a slow broker, its answer).
FAMILIES = (
    ("rebalance begins", "rebalance ends"),
    ("rebalance",),
    ("membership lost and rejoined",),
    ("session expires", "membership lost", "interim owner handles"),
    ("fetch late",),
    ("time passes",),
    ("broker refuses",),
    ("broker slow", "broker answers"),
    ("commits slow", "commits land"),
    ("coordinator away",),
    ("position unreadable",),
    ("held bound",),
    ("stop",),
)
assert {kind for family in FAMILIES for kind in family} == set(STEPS) - set(ALWAYS)


@st.composite
def scripts(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    """How many partitions (2, 3 or 4), and a script of 1 to 80 steps (drawn first: hypothesis' lists are a few
    items long on average) of a few families of rebalance and fault only, drawn for the script ("swarm" testing: a
    script that rebalances without end rarely holds a record long enough for the rebalance to matter)."""
    partitions = draw(st.sampled_from([2, 2, 3, 4]))
    families = draw(st.sets(st.sampled_from(FAMILIES), min_size=1, max_size=3))
    kinds = sorted({kind for family in families for kind in family})
    length = draw(st.integers(1, 80))
    steps = st.one_of(*(STEPS[kind] for kind in (*ALWAYS, *kinds)))
    return partitions, draw(st.lists(steps, min_size=length, max_size=length))


SCRIPTS = scripts()


@pytest.mark.fuzz
@pytest.mark.parametrize("examples", CASES)
@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_no_rebalance_interleaving_loses_a_record_or_commits_what_is_not_this_consumers(
    rounds_in_flight: int, examples: int, monkeypatch: pytest.MonkeyPatch
):
    _model(rounds_in_flight, examples, monkeypatch)


@pytest.mark.fuzz
@pytest.mark.parametrize("examples", ONE_ROUND_CASES)
def test_one_round_at_a_time_no_rebalance_interleaving_loses_a_record_or_commits_what_is_not_this_consumers(
    examples: int, monkeypatch: pytest.MonkeyPatch
):
    """The same scripts, the loop handling one round at a time (``rounds_in_flight`` 1: the consumer loop's default,
    the dispatcher's with ``EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT=1``)."""
    _model(1, examples, monkeypatch)


def _model(rounds_in_flight: int, examples: int, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=time.sleep))
    monkeypatch.setattr(loop_module, "IN_FLIGHT_WAIT_MAX_MS", 0)  # turns in the model's time: no real wait

    @settings(FUZZ, max_examples=examples)
    @given(drawn=SCRIPTS)
    def model(drawn: tuple[int, list[tuple[Any, ...]]]) -> None:
        partitions, script = drawn
        check(script, rounds_in_flight, clock, partitions)

    model()


def check(
    script: Sequence[tuple[Any, ...]], rounds_in_flight: int, clock: Clock | None = None, partitions: int = 2
) -> None:
    """Run ``script`` on a new model of ``partitions`` partitions, checking the promises after every step and at the
    end."""
    model = Model(rounds_in_flight, clock or Clock(), partitions)
    # The loop's logs captured, not rendered (a handler that raises is logged with its traceback: slow to render).
    with structlog.testing.capture_logs():
        _check(model, script)


def _check(model: Model, script: Sequence[tuple[Any, ...]]) -> None:
    try:
        for step in script:
            model.run(step)
            model.check()
        model.everything_settles()
    finally:
        model.close()


# What the model found on a455514 (main), as plain tests: pre-existing (on 1977edd too), fixed in session 46. A round
# handed back (an outage, or the broker not acknowledging its outcomes) left the records held after the hand-back
# offset held, and remembered what was settled past it: a record held, due before the partition was read again up
# to it, was settled alone and its commit passed the records handed back (ConsumerLoop._hand_back,
# HeldRecords.read_again_from); and a held record settled while its partition was sought back before it carried the
# commit past records read again (ConsumerLoop._no_further_than_read).


def check_strictly(
    script: Sequence[tuple[Any, ...]], rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch, partitions: int = 2
) -> None:
    """:func:`check` ``script`` on the model's clock."""
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=time.sleep))
    monkeypatch.setattr(loop_module, "IN_FLIGHT_WAIT_MAX_MS", 0)  # turns in the model's time: no real wait
    check(script, rounds_in_flight, clock, partitions)


def _loop(group: Group, producer: Producer, handle_round: Any, rounds_in_flight: int) -> ConsumerLoop[Any]:
    return ConsumerLoop(
        service="rebalance-model",
        consumer=group,
        producer=producer,
        decode=value_decoder(RunRequested.model_validate_json),
        dead_letter_topic=DEAD_LETTERS,
        handle_round=handle_round,
        rounds_in_flight=rounds_in_flight,
        dead_letter_backoff_seconds=0,
    )


def _turn_until(loop: ConsumerLoop[Any], condition: Callable[[], bool]) -> int:
    """Turn the loop until ``condition`` holds (its interruptions swallowed, as the service's backoff does); how many
    turns were interrupted."""
    interrupted = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the loop did not reach the expected state in time"
        try:
            loop.poll_once()
        except (RoundInterrupted, KafkaTimeoutError):
            interrupted += 1
    return interrupted


@pytest.mark.parametrize("rounds_in_flight", [1, 2], ids=["one-round", "2-in-flight"])
def test_a_record_held_by_a_round_the_broker_refused_is_not_committed_past_the_records_handed_back_before_it(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """The model's script, shrunk: "1:0" delivered and "1:1" not begun by the round's deadline (held, due at once) in
    a round whose outcomes the broker does not acknowledge (away): the round is handed back, P1 sought to "1:0".
    The broker back, the next poll (not waiting: a held record is due) brings nothing of P1 yet (its fetch from the
    sought position is not back), so "1:1", still held, is handled alone and P1 committed past "1:0", whose outcome
    was never produced: a crash, or a rebalance moving P1, then loses it."""
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=time.sleep))
    monkeypatch.setattr(loop_module, "IN_FLIGHT_WAIT_MAX_MS", 0)  # turns in the model's time: no real wait
    producer = Producer()
    group = Group(lambda key: producer.acknowledged(key) or key in producer.lettered)
    handled: list[str] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        results: list[list[Outgoing] | BaseException] = []
        for request in requests:
            name = record_name(request)
            handled.append(name)
            first = handled.count(name) == 1
            if name == "1:1" and first:
                results.append(HoldRecord("not begun by the round's deadline", clock.now))
            else:
                results.append([Outgoing(OUTCOMES, name, name.encode())])
        return results

    loop = _loop(group, producer, handle_round, rounds_in_flight)
    try:
        group.append(P0, 1)  # "0:0"
        group.append(P1, 2)  # "1:0", "1:1"
        producer.refusing = True
        assert _turn_until(loop, lambda: not len(loop._window or ()) and len(handled) == 3) == 1  # handed back
        assert group.positions[P1] == 0  # P1 sought back to "1:0"

        producer.refusing = False
        group.not_fetched_yet.add(P1)
        _turn_until(loop, lambda: not len(loop._window or ()) and handled.count("0:0") == 2)  # P0 read again
        assert group.violations == []  # at each commit: none past a record not settled ("1:0")

        group.not_fetched_yet.clear()
        _turn_until(loop, lambda: group.committed.get(P1) == 2 and not len(loop._window or ()))
        assert producer.acknowledged((P1, 0))
        assert producer.acknowledged((P1, 1))
        assert group.violations == []
    finally:
        if loop._window is not None:
            loop._window.close()


def test_a_record_held_by_a_round_in_flight_after_one_the_broker_refused_is_not_committed_past_records_not_read_again(
    monkeypatch: pytest.MonkeyPatch,
):
    """The model's script, shrunk: round 1 ("0:0" to "0:2") still with the handler as round 2 ("0:3") holds "0:3",
    due at once; then the broker refuses round 1's outcomes: both rounds are handed back, P0 sought to "0:0", but
    "0:3" stays held. The broker back, the next round takes "0:3" (due) and the first records read again ("0:0",
    "0:1": a poll's size), and commits P0 past "0:2", never produced."""
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=time.sleep))
    monkeypatch.setattr(loop_module, "IN_FLIGHT_WAIT_MAX_MS", 0)  # turns in the model's time: no real wait
    producer = Producer()
    group = Group(lambda key: producer.acknowledged(key) or key in producer.lettered)
    handled: list[str] = []
    first_round = threading.Event()

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        names = [record_name(request) for request in requests]
        handled.extend(names)
        if handled.count("0:0") == 1 and "0:0" in names:
            assert first_round.wait(DEADLINE_SECONDS)
        if handled.count("0:3") == 1 and names == ["0:3"]:
            return [HoldRecord("not begun by the round's deadline", clock.now)]
        return [[Outgoing(OUTCOMES, name, name.encode())] for name in names]

    loop = _loop(group, producer, handle_round, rounds_in_flight=2)
    window = loop._window
    assert window is not None
    try:
        group.append(P0, 4)  # "0:0" to "0:3": rounds of at most MAX_POLL_RECORDS (3)
        loop.poll_once()  # round 1: "0:0", "0:1", "0:2", with the handler until released
        loop.poll_once()  # round 2: "0:3"
        second = list(window)[1].results
        assert second is not None
        second.exception(timeout=DEADLINE_SECONDS)  # round 2 held "0:3"
        producer.refusing = True
        first_round.set()
        assert _turn_until(loop, lambda: not len(window)) == 1  # both rounds handed back
        assert group.positions[P0] == 0  # P0 sought back to "0:0"

        producer.refusing = False
        loop.poll_once()  # a round: "0:3" (due) and the first records read again, "0:0" and "0:1" (a poll's size)
        (again,) = window
        assert again.results is not None
        again.results.exception(timeout=DEADLINE_SECONDS)
        loop.poll_once()  # its outcomes produced, acknowledged, and its offsets committed: "0:2" not read again yet
        assert group.violations == []  # at each commit: none past a record not settled ("0:2")

        _turn_until(loop, lambda: group.committed.get(P0) == 4 and not len(window))
        assert group.violations == []
    finally:
        first_round.set()
        window.close()


@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_no_commit_goes_backwards_after_an_outage_hands_back_records_before_some_settled_past_a_hold(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """The model's script, shrunk (its steps: see :meth:`Model.run`): round 1 ("0:0" to "0:2") holds its three records,
    due at once; round 2 ("0:3" to "0:5") delivers its own; round 3 takes "0:0" and "0:1" (due) and meets an outage:
    P0 is sought back to "0:0". The next round settles "0:0" to "0:2" and commits 6 (past what round 2 settled); the
    round after it reads "0:3" and on again (the partition's position is 3) and commits 5: backwards."""
    check_strictly(
        [
            ("append", 0, 6),  # "0:0" to "0:5"
            ("turn",),  # round 1: "0:0", "0:1", "0:2" (a poll's size: 3)
            ("turn",),  # round 2: "0:3", "0:4", "0:5"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("turn",),  # round 3: "0:0", "0:1" (due: a round's size less one)
            ("release", 0, ("ok",)),  # round 2 delivers its records
            ("release", 0, ("outage",)),  # round 3 meets an outage
            ("turn",),  # handed back: P0 sought to "0:0"
        ],
        rounds_in_flight,
        monkeypatch,
    )


@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_records_held_after_a_record_an_outage_hands_back_are_not_committed_past_it(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """The model's script, shrunk (its steps: see :meth:`Model.run`): round 1 ("0:0" to "0:2") and round 2 ("0:3")
    hold their records, due at once; round 3 takes "0:0" and "0:1" (due) and meets an outage: P0 is sought back to
    "0:0", but "0:2" and "0:3" stay held. The next round takes them (due) with "0:0" (read again: the rest of a poll's
    size) and commits 4, past "0:1", never settled."""
    check_strictly(
        [
            ("append", 0, 4),  # "0:0" to "0:3"
            ("turn",),  # round 1: "0:0", "0:1", "0:2" (a poll's size: 3)
            ("turn",),  # round 2: "0:3"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("turn",),  # round 3: "0:0", "0:1" (due: a round's size less one)
            ("release", 0, ("hold_due",)),  # round 2 holds "0:3", due at once
            ("release", 0, ("outage",)),  # round 3 meets an outage
            ("turn",),  # handed back: P0 sought to "0:0"
        ],
        rounds_in_flight,
        monkeypatch,
    )


def test_records_held_and_due_again_in_a_round_in_flight_are_not_committed_past(monkeypatch: pytest.MonkeyPatch):
    """The model's script, shrunk (its steps: see :meth:`Model.run`): P1 is committed to 3, past "1:1" (held by round
    1, not settled), once round 3's outage handed "1:0" back. Either fix alone mends this script (the holds after the
    hand-back released with the settled memory, or no commit past the next fetch); the model needs both."""
    check_strictly(
        [
            ("append", 0, 1),  # "0:0"
            ("append", 1, 2),  # "1:0", "1:1"
            ("turn",),  # round 1: "0:0", "1:0", "1:1"
            ("append", 0, 1),  # "0:1"
            ("append", 1, 1),  # "1:2"
            ("turn",),  # round 2: "0:1", "1:2"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("turn",),  # round 3: "0:0", "1:0" (due)
            ("turn",),
            ("turn",),  # the window full: waits for round 2 (released with outcomes)
            ("release", 0, ("outage",)),  # round 3 meets an outage; then the liveness check's turns
        ],
        3,
        monkeypatch,
    )


def test_a_record_held_again_during_a_rebalance_does_not_carry_the_commit_past_records_read_again(
    monkeypatch: pytest.MonkeyPatch,
):
    """The model's long form (2 rounds in flight): round 1 holds "0:0" to "0:2" (due); a rebalance begins (their holds
    forgotten, P0 sought back to "0:0"); round 2 holds "0:3" meanwhile. Once P0 is given back, "0:3", due, was settled
    before "0:0" to "0:2" were read again, and its commit passed them (on 1977edd too): no commit goes past the
    partition's next fetch now (ConsumerLoop._no_further_than_read)."""
    check_strictly(
        [
            *[("append", 0, 1)] * 4,  # "0:0" to "0:3"
            ("turn",),  # round 1: "0:0" to "0:2"
            ("turn",),  # round 2: "0:3"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("rebalance begins",),
            ("turn",),
            ("release", 0, ("hold_due",)),  # round 2 holds "0:3" during the rebalance; then the liveness check's turns
        ],
        2,
        monkeypatch,
    )


@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_a_record_held_during_a_rebalance_and_settled_alone_does_not_commit_past_records_a_later_round_read_again(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """Session 46's review (pre-existing): as above, but P0's fetch from "0:0" comes back before the round that has
    "0:3" alone settles: a later round has "0:0" to "0:2" in hand, the position is past them, and the commit of "0:3"
    passed them (`committed 0@3 past records not settled`). No commit passes a record a later round in flight has in
    hand and this one did not settle (ConsumerLoop._no_further_than_in_hand)."""
    check_strictly(
        [
            *[("append", 0, 1)] * 4,  # "0:0" to "0:3"
            ("turn",),  # round 1: "0:0" to "0:2"
            ("turn",),  # round 2: "0:3"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("rebalance begins",),
            ("fetch late", 0, True),
            ("turn",),  # round 1 sent (holds); the poll revokes: holds forgotten, P0 sought back to "0:0"
            ("release", 0, ("hold_due",)),  # round 2 holds "0:3"
            ("rebalance ends", (0, 1)),
            ("turn",),  # the poll gives P0 back at 0; "0:3" due: a round of its own
            ("turn",),
            ("fetch late", 0, False),
            ("turn",),  # the next round reads "0:0".. again (the position past "0:2")
            ("turn",),
            ("release", 0, ("ok",)),  # the round with "0:3" settles it first
            ("turn",),
        ],
        rounds_in_flight,
        monkeypatch,
    )


# What the deeper model found on 9034f1b (main), as plain tests (session 47).


@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_a_commit_refused_while_the_coordinator_is_away_is_sent_again_on_an_idle_partition(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """The model's script, shrunk: "0:0" settled while the group coordinator is away; its commit, sent without
    waiting, is refused (kafka-python answers it at the next poll and never sends it again). P0 then idle, nothing
    committed it again until the consumer closed: its lag above 0, "0:0" handled again after a crash. A refused commit
    is sent again at the next turn now (ConsumerLoop._commit_answered)."""
    check_strictly(
        [
            ("coordinator away", True),
            ("append", 0, 1),  # "0:0"
            ("turn",),  # round 1: "0:0"
            ("release", 0, ("ok",)),
            ("turn",),  # its outcome acknowledged, P0 committed without waiting: refused, answered at the next poll
            ("turn",),
            ("coordinator away", False),  # then the liveness check's turns: P0 idle
        ],
        rounds_in_flight,
        monkeypatch,
    )
