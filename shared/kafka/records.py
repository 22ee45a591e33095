"""The shape of a record, in and out: what the clients produce and the consumer loop reads and hands on.

Its own module so that :mod:`shared.kafka.clients` and :mod:`shared.kafka.loop` both depend on it
rather than on each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from opentelemetry.context import Context

E = TypeVar("E")

#: A record's headers, as kafka-python gives them: a value may be None, as Kafka allows (a header without a value).
Headers = Sequence[tuple[str, bytes | None]]
#: The headers of a record to produce: values are bytes (kafka-python's ``send`` refuses None).
ProducedHeaders = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: topic, key, the encoded value and its headers.

    Without a ``traceparent`` header of its own, a record is produced with the trace context of the work that
    produced it (the record being handled, or the span current at :func:`shared.kafka.produce`).
    """

    topic: str
    key: str
    value: bytes
    headers: ProducedHeaders = ()


class Round(list[E]):
    """A poll's decoded events as the consumer loop hands them to a round handler: a list, and ``contexts[i]``
    the trace context of event ``i``'s record (its span current), to handle it in (``shared.tracing.attached``)."""

    def __init__(self, events: Iterable[E], contexts: Sequence[Context | None]) -> None:
        super().__init__(events)
        self.contexts = contexts


def round_contexts(events: Sequence[E]) -> Sequence[Context | None]:
    """Each event's trace context when ``events`` is the loop's :class:`Round`; no context for each otherwise
    (a round handed over by a test, say)."""
    if isinstance(events, Round) and len(events.contexts) == len(events):
        return events.contexts
    return [None] * len(events)


class _Placed(Protocol):
    """A consumed record's topic, partition and offset."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class RecordPosition(_Placed, Protocol):
    """Where a consumed record is in its topic: the same whenever the record is read again (redelivered, handed
    back), so a decoder may derive what the record does not say from it (a run id, say). kafka-python's
    ``ConsumerRecord`` is one; ``timestamp`` is the record's (milliseconds since the epoch, stored in the log)."""

    @property
    def timestamp(self) -> int: ...


class Consumed(_Placed, Protocol):
    """What the consumer loop reads of a consumed record (kafka-python's ``ConsumerRecord`` has it all).

    ``value`` is None for a tombstone; ``headers`` may be empty or None.
    """

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers | None: ...
