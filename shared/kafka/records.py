"""The shape of a record, in and out: what the clients produce and the consumer loop reads and hands on.

Its own module so that :mod:`shared.kafka.clients` and :mod:`shared.kafka.loop` both depend on it
rather than on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: A record's headers, as kafka-python gives them.
Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: topic, key and the encoded value."""

    topic: str
    key: str
    value: bytes


class Consumed(Protocol):
    """What the consumer loop reads of a consumed record (kafka-python's ``ConsumerRecord`` has it all).

    ``value`` is None for a tombstone; ``headers`` may be empty or None.
    """

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers | None: ...
