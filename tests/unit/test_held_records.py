"""HeldRecords: the records a round handler holds back, which of them are due, and the offsets they allow."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from shared.kafka import ConsumerLoop
from shared.kafka.held_records import HeldRecords

P0, P1 = TopicPartition("batches", 0), TopicPartition("batches", 1)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes = b"x"


def record(partition: TopicPartition, offset: int) -> Record:
    return Record(partition.topic, partition.partition, offset)


def test_due_records_are_capped_those_due_longest_first_then_in_offset_order():
    held = HeldRecords("test-due")
    for offset in range(100):
        held.hold(record(P0, offset), until=1000.0 - offset)  # the later the offset, the earlier it is due
    due = held.due(now=2000.0, assigned={P0}, limit=10)
    assert [r.offset for r in due] == list(range(90, 100))
    assert len(held) == 100  # still held until released
    held.release(due)
    assert [r.offset for r in held.due(now=2000.0, assigned={P0}, limit=3)] == [87, 88, 89]
    assert held.due(now=0.0, assigned={P0}) == []  # none due yet


def test_a_record_held_again_is_due_at_its_new_time_only():
    held = HeldRecords("test-again")
    held.hold(record(P0, 1), until=10.0)
    held.hold(record(P0, 1), until=50.0)
    assert held.due(now=20.0, assigned={P0}) == []
    assert [r.offset for r in held.due(now=60.0, assigned={P0})] == [1]
    assert [r.offset for r in held.due(now=60.0, assigned={P0})] == [1]  # not settled: due again


def test_a_partition_read_again_from_an_offset_holds_nothing_from_there_and_remembers_nothing_settled_past_it():
    held = HeldRecords("test-read-again")
    for offset in (1, 3, 5):
        held.hold(record(P0, offset), until=0.0)
    held.release([record(P0, 5)])
    held.hold(record(P0, 5), until=0.0)  # held again: a stale heap entry beside the live one
    held.hold(record(P1, 3), until=0.0)
    assert held.commit_offsets({P0: 9}) == {P0: 1}  # records 6 to 8 settled past the held ones: remembered
    held.read_again_from(P0, 3)  # handed back to "3": read again from there
    assert sorted(r.offset for r in held.due(now=1.0, assigned={P0, P1}) if r.partition == 0) == [1]
    assert held.count_held([(P1, 3)]) == 1  # another partition's holds stay
    held.release([record(P0, 1)])
    # Nothing held of P0 any more: a commit of records settled up to 2 goes no further than 3 (not to 9).
    assert held.commit_offsets({P0: 2}) == {P0: 3}


def test_a_forgotten_partition_no_longer_caps_its_commits():
    held = HeldRecords("test-forget")
    held.hold(record(P0, 3), until=0.0)
    assert held.commit_offsets({P0: 7}) == {P0: 3}  # records 4 to 6 settled past the held one
    held.forget([P0])  # revoked
    assert len(held) == 0
    # Back again, read from the committed offset by now: nothing of before limits (or lifts) its commits.
    assert held.commit_offsets({P0: 5}) == {P0: 5}


class _Consumer:
    """Just enough of a KafkaConsumer for the loop's constructor."""

    config: dict[str, Any] = {"group_id": "g"}

    def __init__(self) -> None:
        self.listener: Any = None
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.owned = {P0, P1}
        #: Each partition's next fetch offset (kafka-python's subscription state, read by the loop's listener).
        self.positions: dict[TopicPartition, int | None] = {P0: 100, P1: 100}
        self._subscription = self

    def position(self, partition: TopicPartition) -> SimpleNamespace | None:
        at = self.positions[partition]
        return None if at is None else SimpleNamespace(offset=at)

    def subscription(self) -> set[str]:
        return {"batches"}

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.listener = listener

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self.owned:
            raise ValueError("Unassigned partition")  # what kafka-python raises
        self.seeks.append((partition, offset))
        self.positions[partition] = offset


def _round_loop(consumer: _Consumer, service: str) -> ConsumerLoop[Any]:
    """A loop with a round handler over ``consumer`` (its rebalance listener given to the consumer)."""
    return ConsumerLoop(
        service=service,
        consumer=consumer,
        producer=None,
        decode=lambda value, _headers, _position: value,
        dead_letter_topic="letters",
        handle_round=lambda events: [[] for _ in events],
    )


def test_the_loop_forgets_the_holds_of_a_partition_as_it_is_revoked():
    consumer = _Consumer()
    loop = _round_loop(consumer, "test-revoked")
    loop.held.hold(record(P0, 3), until=0.0)
    loop.held.hold(record(P1, 8), until=0.0)
    consumer.listener.on_partitions_revoked([P0])
    assert not loop.held.is_held(record(P0, 3))
    assert loop.held.is_held(record(P1, 8))


def test_a_partition_revoked_with_held_records_is_sought_back_to_the_first_of_them():
    """A rebalance may give the partition back to this consumer, which keeps its position (kafka-python): sought
    back, its held records are read again rather than lost with their holds."""
    consumer = _Consumer()
    loop = _round_loop(consumer, "test-revoked-seek")
    loop.held.hold(record(P0, 9), until=0.0)
    loop.held.hold(record(P0, 4), until=50.0)
    loop.held.hold(record(P0, 6), until=0.0)
    loop.held.release([record(P0, 4)])  # settled meanwhile: the first held is 6
    consumer.listener.on_partitions_revoked([P0, P1])  # P1 holds nothing: its position stands
    assert consumer.seeks == [(P0, 6)]
    assert len(loop.held) == 0
    loop.held.hold(record(P1, 2), until=0.0)
    consumer.owned = {P0}  # P1 gone before the listener ran: its next owner reads it from the committed offset
    consumer.listener.on_partitions_revoked([P1])
    assert consumer.seeks == [(P0, 6)]
    assert len(loop.held) == 0


def test_a_partition_is_never_sought_forward_past_records_the_loop_handed_back():
    """A round whose outcomes could not be produced hands its partition back (sought to its first record, to be read
    again) while a record of it stays held; a rebalance then must not seek the partition forward to that held record:
    the records handed back before it would never be read again (a review's probe of the first fix)."""
    consumer = _Consumer()
    loop = _round_loop(consumer, "test-revoked-handed-back")
    loop.held.hold(record(P0, 5), until=1e12)
    consumer.seek(P0, 3)  # the loop's hand-back: records 3 and after are read again
    consumer.listener.on_partitions_revoked([P0, P1])
    assert consumer.seeks == [(P0, 3)]
    assert consumer.positions[P0] == 3
    assert len(loop.held) == 0


def test_a_partition_without_a_position_is_not_sought():
    """No position (awaiting its reset): it is read from the committed offset, which never passes a held record."""
    consumer = _Consumer()
    loop = _round_loop(consumer, "test-revoked-no-position")
    loop.held.hold(record(P0, 5), until=0.0)
    consumer.positions[P0] = None
    consumer.listener.on_partitions_revoked([P0])
    assert consumer.seeks == []
    assert len(loop.held) == 0


def test_partitions_lost_are_forgotten_and_not_sought():
    """Forced out of the group, the consumer drops the partitions' state: whoever gets them next reads them from
    the committed offset; no seek (it would say it reads them again, which it does not decide)."""
    consumer = _Consumer()
    loop = _round_loop(consumer, "test-lost")
    loop.held.hold(record(P0, 5), until=0.0)
    consumer.listener.on_partitions_lost({P0})
    assert consumer.seeks == []
    assert len(loop.held) == 0


#: One step on one partition: a new record "held" or "settled", or the n-th record held (modulo) settled.
steps = st.lists(
    st.tuples(st.sampled_from([P0, P1]), st.one_of(st.sampled_from(["held", "settled"]), st.integers(0, 7))),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(rounds=st.lists(steps, max_size=12))
def test_commit_offsets_never_pass_a_held_record_and_catch_up_once_none_is(rounds):
    held = HeldRecords("test-commit")
    next_offset = {P0: 0, P1: 0}
    waiting: dict[TopicPartition, list[int]] = {P0: [], P1: []}  # held, in offset order
    committed = {P0: 0, P1: 0}
    for steps_of_round in rounds:
        done: dict[TopicPartition, int] = {}
        for partition, action in steps_of_round:
            if isinstance(action, int):
                if not waiting[partition]:
                    continue
                offset = waiting[partition].pop(action % len(waiting[partition]))
                held.release([record(partition, offset)])
            else:
                offset = next_offset[partition]
                next_offset[partition] += 1
                if action == "held":
                    held.hold(record(partition, offset), until=0.0)
                    waiting[partition].append(offset)
                    continue
            done[partition] = max(done.get(partition, 0), offset + 1)
        for partition, offset in held.commit_offsets(done).items():
            assert offset >= committed[partition]  # never backwards
            if waiting[partition]:
                assert offset <= min(waiting[partition])  # never past a held record
            else:
                assert offset == next_offset[partition]  # past every record settled, at once
            committed[partition] = offset


def test_due_records_go_by_priority_then_by_how_long_they_were_held():
    high, normal = TopicPartition("batches.high", 0), TopicPartition("batches", 0)
    normal_9 = TopicPartition("batches", 9)
    held = HeldRecords("test-priority", priority_topics=["batches.high", "batches", "batches.low"])
    held.hold(record(normal_9, 0), until=10.0)  # handed back first, on partition 9
    for offset in range(100):
        held.hold(record(normal, offset), until=20.0 + offset)  # handed back later, on partition 0
    held.hold(record(high, 7), until=50.0)  # a high-priority batch handed back after many normal ones
    due = held.due(now=200.0, assigned={high, normal, normal_9}, limit=3)
    # The high one first (its topic's name sorts after "batches"), then the longest held, whatever its partition.
    assert {(r.topic, r.partition, r.offset) for r in due} == {
        ("batches.high", 0, 7),
        ("batches", 9, 0),
        ("batches", 0, 0),
    }
