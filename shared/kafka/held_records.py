"""Records a round handler holds back: not handled yet, not dead-lettered, not committed; handled again later.

A handler raises :class:`HoldRecord` for a record that cannot be handled now for a reason that concerns it
alone (the dispatcher: its partner's circuit breaker is open) and says when to try again; or, with a time already
come, for a record its round did not begin or did not send (the extractor's rounds past their deadline, ``0.0``; the
dispatcher's past their deadline or end, the monotonic time it handed it back, so the longest held go first): it is
handed to the next round. The consumer loop
keeps the record in memory and hands it to the handler again once that time has come, while it goes on
polling and handling the records after it: other partners keep being served.

Kafka commits a partition's offsets in order, so a partition's committed offset stops at its first held
record until that record is settled; the records after it that were settled meanwhile are then committed
at once. Should the process stop or the partition move to another consumer, the held record and those
after it are read again from the committed offset (at least once: a record settled after a held one may be
handled twice, as after any crash). A rebalance revokes every partition, forgetting their holds, and may
give a partition back to the same consumer, which goes on from its position (kafka-python keeps it): the
partition is then sought back, as it is revoked, to its first held record, read again from there. Records read
again so while a round in flight still handles them (the dispatcher's rounds in flight) are not handed to the
handler a second time: the consumer loop settles them as that round does (``ConsumerLoop._start_round``).

Memory is bounded: past ``max_records`` held records or ``max_bytes`` of their values, the loop stops
fetching new records (every partition paused) until held ones are settled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener
from kafka.structs import TopicPartition
from prometheus_client import Gauge

HELD_RECORDS = Gauge(
    "member_export_consumer_held_records",
    "Records a service holds back uncommitted to handle later (a partner's circuit breaker open, a dispatcher round's "
    "batches not begun by its deadline), by service.",
    ["service"],
)

log = structlog.get_logger(__name__)


class HoldRecord(Exception):
    """Raised by a round handler for a record to handle again at ``until`` (a ``time.monotonic()`` instant)."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.until = until


@dataclass
class _Held:
    record: Any
    until: float


def record_key(record: Any) -> tuple[TopicPartition, int]:
    """A consumed record's partition and offset: what tells it from every other record (and a copy read again)."""
    return TopicPartition(record.topic, record.partition), record.offset


class HeldRecords:
    """The records held back by one consumer loop, and the commit offsets they allow.

    Every operation costs O(log H) per record concerned (H: records held), never a scan of them all: a heap of
    held offsets per partition (its first held record) and, per priority, a heap by due time, both forgetting
    lazily the entries of records released or held again since.

    The records due are taken by ``priority_topics`` (most urgent first: the consumer loop's order; a topic not
    among them after those that are), then those due the longest first: a handler holds a record it hands to its
    next round with the monotonic time it handed it back, so its age breaks the ties, not its topic's name.
    """

    #: Stale heap entries tolerated beyond the records held before the heaps are rebuilt.
    COMPACT_SLACK = 1024

    def __init__(
        self,
        service: str,
        *,
        max_records: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        priority_topics: Sequence[str] = (),
    ) -> None:
        self.service = service
        #: Each priority topic's rank, the most urgent 0 (a topic not among them ranks after them all).
        self._ranks = {topic: rank for rank, topic in enumerate(priority_topics)}
        self.max_records, self.max_bytes = max_records, max_bytes
        self._held: dict[tuple[TopicPartition, int], _Held] = {}
        #: Per partition, the offsets held (a heap; an offset no longer held is dropped when it comes first).
        self._offsets: dict[TopicPartition, list[int]] = {}
        #: Per topic rank, (until, partition, offset) of every hold (a heap; a stale entry is dropped when it comes
        #: first).
        self._due: dict[int, list[tuple[float, str, int, int]]] = {}
        #: Per partition, the next offset after the records settled while a record before them was held.
        self._settled_past: dict[TopicPartition, int] = {}
        self._bytes = 0
        self.restrained = False
        HELD_RECORDS.labels(service=service).set(0)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def full(self) -> bool:
        """Whether no more records should be fetched until some held ones are settled."""
        return len(self._held) >= self.max_records or self._bytes >= self.max_bytes

    def hold(self, record: Any, until: float) -> None:
        """Keep ``record`` to hand back at ``until``."""
        key = record_key(record)
        if key not in self._held:
            self._bytes += len(record.value or b"")
            heapq.heappush(self._offsets.setdefault(key[0], []), key[1])
        self._held[key] = _Held(record, until)
        heapq.heappush(
            self._due.setdefault(self._rank(key[0].topic), []), (until, key[0].topic, key[0].partition, key[1])
        )
        self._count()

    def _rank(self, topic: str) -> int:
        return self._ranks.get(topic, len(self._ranks))

    def release(self, records: list[Any]) -> None:
        """Forget ``records`` (settled, or to be read again from the partition)."""
        for record in records:
            held = self._held.pop(record_key(record), None)
            if held is not None:
                self._bytes -= len(record.value or b"")
        if sum(map(len, self._due.values())) > 2 * len(self._held) + self.COMPACT_SLACK:
            self._compact()
        self._count()

    def read_again_from(self, partition: TopicPartition, offset: int) -> None:
        """``partition`` is read again from ``offset`` (handed back): its records held from there on are held no
        longer, and nothing settled past ``offset`` is remembered (a commit must not jump past records read again).
        A scan of the partition's held offsets (stale ones included): a hand-back is rare (an interruption)."""
        keys = {(partition, at) for at in self._offsets.get(partition, ()) if at >= offset}
        released = [self._held[key].record for key in keys if key in self._held]
        if released:
            self.release(released)
        self.settled_no_further(partition, offset)

    def is_held(self, record: Any) -> bool:
        return record_key(record) in self._held

    def count_held(self, keys: Iterable[tuple[TopicPartition, int]]) -> int:
        """How many of ``keys`` (see :func:`record_key`) are held."""
        return sum(1 for key in keys if key in self._held)

    def forget(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget everything about ``partitions`` (revoked: their new owner reads them from the committed offset,
        and should they come back, they are read from there again: nothing held may stop their commits).
        Returns, per partition that held records, the first of them (where to read it again from)."""
        firsts: dict[TopicPartition, int] = {}
        for partition in set(partitions):
            first = self._first_held(partition)
            if first is not None:
                firsts[partition] = first
            for offset in self._offsets.pop(partition, []):
                held = self._held.pop((partition, offset), None)
                if held is not None:
                    self._bytes -= len(held.record.value or b"")
            self._settled_past.pop(partition, None)
        self._count()
        return firsts

    def due(self, now: float, assigned: set[TopicPartition], limit: int | None = None) -> list[Any]:
        """The held records whose time has come, at most ``limit`` of them (the most urgent priority first, then
        those due the longest first), in offset order (they stay held until released). Records of partitions no
        longer assigned are forgotten: their new owner reads them from the committed offset."""
        self.forget([partition for partition in self._offsets if partition not in assigned])
        self.forget([partition for partition in self._settled_past if partition not in assigned])
        picked: dict[tuple[TopicPartition, int], _Held] = {}
        for rank in sorted(self._due):
            heap = self._due[rank]
            deferred = []
            while heap and heap[0][0] <= now and (limit is None or len(picked) < limit):
                entry = heapq.heappop(heap)
                until, topic, number, offset = entry
                key = (TopicPartition(topic, number), offset)
                held = self._held.get(key)
                if held is None or held.until != until or key in picked:
                    continue  # released, or held again since (a later entry stands for it)
                picked[key] = held
                deferred.append(entry)  # still held until released: due again should it be handed back unsettled
            for entry in deferred:
                heapq.heappush(heap, entry)
        return [picked[key].record for key in sorted(picked)]

    def commit_offsets(self, settled: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets that may be committed after a round settled records up to ``settled`` (next offsets): no
        further than a partition's first held record; past every record settled so far once none is held."""
        offsets = {}
        for partition, offset in settled.items():
            past = max(offset, self._settled_past.get(partition, offset))
            first_held = self._first_held(partition)
            if first_held is None:
                self._settled_past.pop(partition, None)
                offsets[partition] = past
            else:
                self._settled_past[partition] = past
                offsets[partition] = min(first_held, offset)
        return offsets

    def settled_no_further(self, partition: TopicPartition, offset: int) -> None:
        """Remember nothing of ``partition`` settled past ``offset``: it is read again from there (given back at that
        position by a rebalance), so a commit made once its holds are gone must not jump past records read again."""
        if self._settled_past.get(partition, offset) > offset:
            self._settled_past[partition] = offset

    def first_held(self, partition: TopicPartition) -> int | None:
        """The partition's first held offset (None: none held)."""
        return self._first_held(partition)

    def _first_held(self, partition: TopicPartition) -> int | None:
        heap = self._offsets.get(partition)
        while heap and (partition, heap[0]) not in self._held:
            heapq.heappop(heap)
        if not heap:
            self._offsets.pop(partition, None)
            return None
        return heap[0]

    def _compact(self) -> None:
        """Rebuild both heaps from the records held (their stale entries pile up as records are released)."""
        self._due = {}
        for key, held in self._held.items():
            self._due.setdefault(self._rank(key[0].topic), []).append(
                (held.until, key[0].topic, key[0].partition, key[1])
            )
        for due in self._due.values():
            heapq.heapify(due)
        self._offsets = {}
        for partition, offset in self._held:
            self._offsets.setdefault(partition, []).append(offset)
        for heap in self._offsets.values():
            heapq.heapify(heap)

    def _count(self) -> None:
        HELD_RECORDS.labels(service=self.service).set(len(self._held))


class ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forgets the held records of revoked partitions as the rebalance happens (during the poll): should a
    partition leave and come back within one poll, its old holds would otherwise cap its commits below what the
    interim owner committed, and the records between be read again. ``also`` is told the revoked partitions
    too (the consumer loop: its rounds in flight commit nothing of them).

    A partition that held records is sought back (``seek``: the consumer's) to its first held one as it is
    revoked. Kafka-python revokes every partition at a rebalance, then keeps the position of each one assigned to
    the same consumer again (unlike Java's client, which resets them to the committed offsets): without the
    seek, a held record forgotten here would never be read again (session 43: an extractor's key range, handed
    to the next round as another replica died, never started). The records from there that a round in flight still
    handles are read again too: the loop does not hand them to the handler twice at once. Never forward: a
    partition whose position is already at or before its first held record (the loop handed it back) is left there,
    and one with no position is read from the committed offset. A partition that moves to another consumer drops its
    position, the seek with it: its new owner reads it from the committed offset. Partitions lost (the session
    expired) are forgotten only: their state goes with them. ``assigned`` is told, as the rebalance ends, the
    partitions given back with their position kept (the consumer loop: its rounds in flight commit them after all)."""

    def __init__(
        self,
        held: HeldRecords,
        also: Callable[[set[TopicPartition]], None] | None = None,
        seek: Callable[[TopicPartition, int], None] | None = None,
        position: Callable[[TopicPartition], int | None] | None = None,
        assigned: Callable[[dict[TopicPartition, int], set[TopicPartition]], None] | None = None,
    ) -> None:
        self.held = held
        self.also = also
        self.seek = seek
        #: The consumer's next fetch offset for a partition, read without a request (None: none, it is read from
        #: the committed offset); raises when it cannot tell. Without it, every partition with holds is sought.
        self.position = position
        self.assigned = assigned

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for partition, offset in self._forget(revoked).items():
            self._read_again(partition, offset)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        """Forced out of the group (its session expired): the partitions' state is dropped with them, so they are
        read from the committed offset by whoever gets them next, this consumer included: forgotten, no seek."""
        self._forget(lost)

    def _forget(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget the partitions' holds, tell ``also``; their first held offsets (:meth:`HeldRecords.forget`)."""
        revoked = set(partitions)
        firsts = self.held.forget(revoked)
        if self.also is not None:
            self.also(revoked)
        return firsts

    def _read_again(self, partition: TopicPartition, offset: int) -> None:
        """Seek ``partition`` back to its first held record, should it stay with this consumer; never forward: a
        partition the loop has just handed back (sought before the held record, the records from there to be read
        again, e.g. a round whose outcomes could not be produced) stays where it is."""
        if self.seek is None:
            return
        if self.position is not None:
            try:
                at = self.position(partition)
            except Exception:  # noqa: BLE001 - the position unknown (kafka-python's state changed): sought back as before
                at = offset + 1
            if at is None or at <= offset:
                return  # read from the committed offset (never past a held record), or from before the held one
        try:
            self.seek(partition, offset)
        except ValueError as exc:  # no longer assigned: its next owner reads it from the committed offset
            log.warning(
                "held records not sought back", service=self.held.service, partition=str(partition), error=str(exc)
            )
            return
        log.info(
            "partition revoked with held records: read again from the first should it stay here",
            service=self.held.service,
            partition=str(partition),
            offset=offset,
        )

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Tell ``assigned`` the partitions given back and their positions, and those whose position it cannot tell:
        a partition new to this consumer has none (it is read from its committed offset); one it got back is read on
        from its position, kept or sought back to its first held record."""
        if self.assigned is None or self.position is None:
            return
        kept: dict[TopicPartition, int] = {}
        unknown: set[TopicPartition] = set()
        for partition in assigned:
            try:
                position = self.position(partition)
            except Exception:  # noqa: BLE001 - kafka-python's state changed: neither given back nor read anew
                unknown.add(partition)
                continue
            if position is not None:
                kept[partition] = position
        self.assigned(kept, unknown)
