"""Records a round handler holds back: not handled yet, not dead-lettered, not committed; handled again later.

A handler raises :class:`HoldRecord` for a record that cannot be handled now for a reason that concerns it
alone (the dispatcher: its partner's circuit breaker is open) and says when to try again. The consumer loop
keeps the record in memory and hands it to the handler again once that time has come, while it goes on
polling and handling the records after it: other partners keep being served.

Kafka commits a partition's offsets in order, so a partition's committed offset stops at its first held
record until that record is settled; the records after it that were settled meanwhile are then committed
at once. Should the process stop or the partition move to another consumer, the held record and those
after it are read again from the committed offset (at least once: a record settled after a held one may be
handled twice, as after any crash).

Memory is bounded: past ``max_records`` held records or ``max_bytes`` of their values, the loop stops
fetching new records (every partition paused) until held ones are settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka.structs import TopicPartition
from prometheus_client import Gauge

HELD_RECORDS = Gauge(
    "member_export_consumer_held_records",
    "Records a service holds back uncommitted to handle later (a partner's circuit breaker open), by service.",
    ["service"],
)


class HoldRecord(Exception):
    """Raised by a round handler for a record to handle again at ``until`` (a ``time.monotonic()`` instant)."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.until = until


@dataclass
class _Held:
    record: Any
    until: float


def _key(record: Any) -> tuple[TopicPartition, int]:
    return TopicPartition(record.topic, record.partition), record.offset


class HeldRecords:
    """The records held back by one consumer loop, and the commit offsets they allow."""

    def __init__(self, service: str, *, max_records: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.service = service
        self.max_records, self.max_bytes = max_records, max_bytes
        self._held: dict[tuple[TopicPartition, int], _Held] = {}
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
        key = _key(record)
        if key not in self._held:
            self._bytes += len(record.value or b"")
        self._held[key] = _Held(record, until)
        self._count()

    def release(self, records: list[Any]) -> None:
        """Forget ``records`` (settled, or to be read again from the partition)."""
        for record in records:
            held = self._held.pop(_key(record), None)
            if held is not None:
                self._bytes -= len(record.value or b"")
        self._count()

    def is_held(self, record: Any) -> bool:
        return _key(record) in self._held

    def due(self, now: float, assigned: set[TopicPartition]) -> list[Any]:
        """The held records whose time has come, in offset order (they stay held until released). Records of
        partitions no longer assigned are forgotten: their new owner reads them from the committed offset."""
        for key in [key for key in self._held if key[0] not in assigned]:
            self.release([self._held[key].record])
        for partition in [p for p in self._settled_past if p not in assigned]:
            del self._settled_past[partition]
        return [held.record for key, held in sorted(self._held.items()) if held.until <= now]

    def commit_offsets(self, settled: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets that may be committed after a round settled records up to ``settled`` (next offsets): no
        further than a partition's first held record; past every record settled so far once none is held."""
        offsets = {}
        for partition, offset in settled.items():
            past = max(offset, self._settled_past.get(partition, offset))
            first_held = min((o for (p, o) in self._held if p == partition), default=None)
            if first_held is None:
                self._settled_past.pop(partition, None)
                offsets[partition] = past
            else:
                self._settled_past[partition] = past
                offsets[partition] = min(first_held, offset)
        return offsets

    def _count(self) -> None:
        HELD_RECORDS.labels(service=self.service).set(len(self._held))
