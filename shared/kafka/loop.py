"""The at-least-once consumer loop every service runs: decode → handle → produce → commit.

A handler receives one decoded record and returns the records to produce (or, with ``handle_round``, a
poll's decoded records at once, to handle them concurrently). The loop commits a record's
offset only after everything the handler produced for it has been acknowledged by the broker, so a
crash at any point redelivers rather than loses.

No record stops a consumer. A record that cannot be decoded (whatever the decoder raises: invalid JSON,
``RecursionError`` on deep nesting, ``MemoryError``), whose handler raises, or whose outcome the broker
refuses as a record (too large), is sent to the dead-letter topic with the reason: its value cut to
:data:`DEAD_LETTER_PAYLOAD_BYTES` with its size and SHA-256. A dead letter that cannot be produced is
retried, then logged and counted (``member_export_consumer_dead_letter_failures_total``), and the offset moves on.
No dependency stops a consumer either. A handler that meets an outage (the catalog or member database
unreachable: :func:`shared.outages.is_outage`; the broker unreachable past the producer's delivery timeout)
hands its record back instead of dead-lettering it: what was settled before it is committed, it and the
records after it are sought back to, and the loop waits (backing off up to
:data:`MAX_INTERRUPTION_BACKOFF_SECONDS`; a broker's interruption ends early once the broker answers again, a database
outage once the service's databases do, given an ``outage_probe``) and
polls them again. A commit the group refuses (the consumer was
dropped while the broker was away, a rebalance) is the normal "these records are redelivered" case: logged
and counted, and the consumer rejoins at its next poll. Only a Kafka configuration error (authentication,
authorization, an unsupported version or codec) and the rest of ``BaseException`` (``KeyboardInterrupt``,
``SystemExit``, cancellation) end the loop.

Each record is handled in a span of its own (``process <topic>``, a consumer span) that continues the record's
trace (:mod:`shared.kafka.trace_context`: its ``traceparent`` header, or the context its event carries) or
starts one: the handler runs in it (its logs carry the ids, what it produces the ``traceparent``), and so do
the records produced for it, dead letters included. A round handler gets each event's context alongside it
(:class:`shared.kafka.records.Round`).
"""

from __future__ import annotations

import codecs
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    AuthorizationError,
    CorruptRecordError,
    InvalidRecordError,
    KafkaConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    SaslAuthenticationFailedError,
    UnsupportedCodecError,
    UnsupportedSaslMechanismError,
    UnsupportedVersionError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from shared.domain.credential_patterns import mask_credential_shapes
from shared.domain.masking import MASK
from shared.domain.secret_names import secret_name
from shared.errors import InvalidInput, RetryableError
from shared.events import DeadLetter, DeadLetterHeader, bounded_reason, cut_text
from shared.exception_reasons import exception_reason
from shared.health import GROUP, Health
from shared.kafka.clients import (
    InFlight,
    close_producer,
    produce,
    produce_and_wait,
    produce_timeout_seconds,
    send_record,
)
from shared.kafka.group_rejoin import revive_lost_rejoin
from shared.kafka.held_records import ForgetRevoked, HeldRecords, HoldRecord, record_key
from shared.kafka.records import Consumed as Consumed
from shared.kafka.records import Headers as Headers
from shared.kafka.records import Outgoing as Outgoing
from shared.kafka.records import ProducedHeaders, RecordPosition, Round
from shared.kafka.round_window import RoundWindow
from shared.kafka.trace_context import decoded_in_context
from shared.metrics import RECORDS_CONSUMED, RECORDS_DEAD_LETTERED, ConsumerLagSeries, partition_lag
from shared.outages import describe, is_outage
from shared.tracing import attached, in_span, kafka_headers, start_span

E = TypeVar("E")
log = structlog.get_logger(__name__)

#: A poll's events handled at once (a :class:`Round`: a list, with each event's trace context): per event, the
#: records to produce or the exception it raised.
RoundHandler = Callable[[list[E]], Sequence["list[Outgoing] | BaseException"]]
#: A record's decoder: its value, headers and position in (the position None outside a consumer: a decoder given
#: a record by hand), its event out; raises when the record is not one. Pure: the same record, the same event.
Decoder = Callable[[bytes, Headers, RecordPosition | None], E]

#: The most of a source record's value a dead letter carries, in bytes of its JSON text (the whole
#: value's size and SHA-256 are always there): a dead letter stays far below the broker's record limit.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
#: The longest dead-letter key, in bytes (the source record's key, cut).
KEY_MAX_BYTES = 1024
#: The most of a source record's header name a dead letter carries, in bytes of its JSON text...
DEAD_LETTER_HEADER_NAME_BYTES = 256
#: ... and of a header's value...
DEAD_LETTER_HEADER_VALUE_BYTES = 1024
#: ... and of all its headers: the headers past it are left out (``headers_truncated``).
DEAD_LETTER_HEADERS_BYTES = 4 * 1024
#: Attempts at producing a dead letter before it is given up (logged and counted), the first included.
DEAD_LETTER_ATTEMPTS = 3
#: The wait before the second attempt at a dead letter, doubling with each further one.
DEAD_LETTER_BACKOFF_SECONDS = 0.5
#: The most of a record's key a span tells, in bytes.
SPAN_KEY_MAX_BYTES = 256

#: Errors with which the producer or the broker refuses a record itself: sending it again fails again.
_RECORD_REFUSED: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
    ValueError,  # send(): a key or value the client cannot encode
    TypeError,
)

#: Errors that no wait will cure: the process is misconfigured (credentials, ACLs, versions, codecs).
FATAL_KAFKA_ERRORS: tuple[type[Exception], ...] = (
    AuthorizationError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
    KafkaConfigurationError,
    UnsupportedVersionError,
    UnsupportedCodecError,
)
#: While rounds are in flight, the loop polls for up to this long (milliseconds) while records wait in Kafka (a
#: backlog). With none, once the last poll found nothing, it waits for a round to move on (its handling done, or the
#: broker's answer to its outcomes: acted on at once) before it polls again without waiting: first this long, then
#: twice as long after each poll in a row that finds nothing, up to :data:`IN_FLIGHT_WAIT_MAX_MS`; a poll that brings
#: records starts again. Also the longest wait while records are held (one may fall due) or an outcome's
#: acknowledgement cannot call back.
IN_FLIGHT_POLL_MS = 10
#: The longest wait for a round in flight to move on (milliseconds): a record arriving meanwhile (another run's) is
#: polled no later than this, and a rebalance kafka-python heard of meanwhile (on its heartbeat thread) is joined no
#: later than this (its join goes on in kafka-python's I/O thread; its assignment is taken up to this later).
#: Polling every 10 ms instead cost a one-member run that fits one round 7-16% of its time (issue 18): the loop
#: thread woke 100 times a second, each poll taking the GIL from the round's requests.
IN_FLIGHT_WAIT_MAX_MS = 100
#: The first wait after an interrupted round, doubling with each interruption in a row up to the maximum.
INTERRUPTION_BACKOFF_SECONDS = 0.5
MAX_INTERRUPTION_BACKOFF_SECONDS = 30.0
#: How often a wait after an interruption asks whether the dependency that interrupted answers again: no two polls
#: of an interrupted loop are closer than this (the first backoff is no shorter), whatever the probe says.
INTERRUPTION_PROBE_SECONDS = 0.5
#: A metadata update unanswered this long means the broker is away (see :class:`MetadataAnswered`).
UNANSWERED_IS_AWAY_SECONDS = 1.0
#: After a commit is refused (the coordinator away or moving), what is owed is sent again no sooner than a poll
#: interval later, the wait doubling with each refusal in a row up to this (an outage of minutes: a re-send every few
#: seconds, not at every idle poll); a commit accepted, or the assignment changing, ends the wait.
OWED_COMMIT_MAX_BACKOFF_SECONDS = 5.0

ROUNDS_INTERRUPTED = Counter(
    "member_export_consumer_rounds_interrupted_total",
    "Polls whose records were handed back to be handled again (a dependency away, the broker unreachable), "
    "by service and cause (the error's type).",
    ["service", "cause"],
)
COMMITS_REFUSED = Counter(
    "member_export_consumer_commits_refused_total",
    "Offset commits that failed (the group moved on, the coordinator away): the records are redelivered, by "
    "service and cause.",
    ["service", "cause"],
)
INTERRUPTED = Gauge(
    "member_export_consumer_interrupted",
    "1 while the service's consumer is waiting out a dependency (its last poll was handed back), else 0.",
    ["service"],
)

DEAD_LETTER_FAILURES = Counter(
    "member_export_consumer_dead_letter_failures_total",
    "Dead letters that could not be produced after their retries (logged; the record's offset moved on), by service.",
    ["service"],
)


@dataclass(frozen=True)
class Rejection:
    """A record that will not be handled: the reason its dead letter gives."""

    reason: str


def fetch_position(consumer: Any, partition: TopicPartition) -> int | None:
    """The consumer's next fetch offset for ``partition``, read from kafka-python's subscription state without a
    request (None: it has none, it is read from the committed offset next). Private API (kafka-python 3.0):
    ``KafkaConsumer.position`` may ask the coordinator, which a rebalance listener, run on the client's I/O thread
    during a poll, must not. Raises when the state cannot tell (not assigned, the private API changed)."""
    position = consumer._subscription.position(partition)
    return None if position is None else int(position.offset)


def is_fatal(error: BaseException) -> bool:
    """True when ``error`` means the process cannot work as configured (waiting will not help)."""
    return isinstance(error, FATAL_KAFKA_ERRORS)


def is_interruption(error: BaseException) -> bool:
    """True when ``error`` means a dependency is away rather than that the record is wrong: a database outage,
    or a Kafka error the client calls retriable (the broker unreachable, a leader moving)."""
    if is_outage(error):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False)) and not is_fatal(error)


#: How often the loop reads the consumer's heartbeat age for the readiness probe.
GROUP_CHECK_SECONDS = 2.0
#: Why a consumer is not ready while outside its group (not joined yet, or the broker unreachable).
NOT_IN_GROUP = "not in its consumer group: no heartbeat answered within the session timeout"


def heartbeat_silence_seconds(consumer: Any) -> float | None:
    """Seconds since the consumer's group coordinator last answered one of its heartbeats (infinite before the
    first), or None when the client does not say.

    Read from kafka-python's heartbeat state: its ``last-heartbeat-seconds-ago`` metric subtracts a monotonic
    instant from wall-clock time (kafka-python 3.0), so it is no use here.
    """
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    last_receive = getattr(heartbeat, "last_receive", None)
    if not isinstance(last_receive, int | float):
        return None
    return time.monotonic() - float(last_receive)


def interruption_backoff(interruptions: int) -> float:
    """The wait after ``interruptions`` interrupted rounds in a row (1 or more): doubling from
    :data:`INTERRUPTION_BACKOFF_SECONDS`, capped at :data:`MAX_INTERRUPTION_BACKOFF_SECONDS`."""
    exponent = min(max(interruptions, 1) - 1, 16)  # 2**16 * 0.5 s is far past the cap: no overflow
    return min(MAX_INTERRUPTION_BACKOFF_SECONDS, INTERRUPTION_BACKOFF_SECONDS * float(2**exponent))


#: Asked whether a dependency away answers again: True when it does. Raising counts as "still away". One with a
#: ``close()`` method is closed when its wait is over (it starts no more checks).
Probe = Callable[[], bool]
#: Makes the probe of one wait after a database outage (None: the backoff runs its course).
OutageProbe = Callable[[], "Probe | None"]


def wait_for_answer(
    delay: float,
    probe: Probe | None,
    stopping: threading.Event,
    *,
    step: float = INTERRUPTION_PROBE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait up to ``delay`` seconds, in pauses of ``step`` at most, on ``stopping`` (set: the wait ends at once).
    After each pause but the last, ``probe`` (if any) is asked whether the dependency answers again: the wait ends
    there when it does. Returns True when the probe ended the wait, False when it ran out or the loop is stopping.

    The probe is asked once a pause, never more (``delay / step`` times at most): its own cost must be bounded (no
    blocking I/O); one that raises is taken for "still away"."""
    deadline = clock() + delay
    while (remaining := deadline - clock()) > 0:
        if stopping.wait(min(step, remaining)):
            return False
        if probe is not None and deadline - clock() > 0 and _answers(probe):
            return True
    return False


def _answers(probe: Probe) -> bool:
    """What ``probe`` says, False when it raises (a probe that cannot tell is no evidence of an answer)."""
    try:
        return bool(probe())
    except Exception as exc:  # noqa: BLE001 - the dependency is taken to be still away
        log.debug("dependency probe failed", error=f"{type(exc).__name__}: {exc}")
        return False


class MetadataAnswered:
    """A probe of the broker behind a Kafka client: True once the client's metadata, seen unanswered since the probe
    was made (an update failed, or none answered within :data:`UNANSWERED_IS_AWAY_SECONDS`: the broker unreachable),
    is answered again (a metadata request the client sends on its own I/O thread, paced by its own reconnect backoff).

    A broker that answers from the first update on was never away: what interrupted the poll is something else (a
    produce the broker refuses, a handler's own timeout), and ending the wait early would handle the same records
    again every pause instead of backing off. So the probe stays False then, and the backoff runs its course. The
    cost: a broker back within about a second of the wait's start is not seen away either, and that wait runs its
    course too. A broker slow to answer (over a second) or a metadata answer with a topic error counts as away:
    at most one early poll a wait, each wait having a probe of its own.

    Asking costs no I/O on the caller's thread: it flags the client's metadata for an update and reads the future of
    that update (a failed one is asked for again). Private API (kafka-python 3.0: ``_client.cluster``, whose
    ``request_update`` is thread-safe); the constructor raises when it is not there.
    """

    def __init__(self, client: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._cluster = client._client.cluster
        self._clock = clock
        self._asked_at = clock()
        self._update = self._cluster.request_update()
        self._seen_away = False

    def __call__(self) -> bool:
        update = self._update
        if not update.is_done:
            # A broker answers metadata in milliseconds; one still unanswered after a second is not there (the
            # client connecting, or in its reconnect backoff), even before the update fails.
            if self._clock() - self._asked_at >= UNANSWERED_IS_AWAY_SECONDS:
                self._seen_away = True
            return False
        if update.failed():
            self._seen_away = True
            self._update = self._cluster.request_update()  # refused or unreachable: asked again, answered later
            self._asked_at = self._clock()
            return False
        return self._seen_away

    @property
    def seen_away(self) -> bool:
        """Whether the broker was seen away since the probe was made (an update failed or was long unanswered)."""
        return self._seen_away


class RoundInterrupted(Exception):
    """Some of a poll's records met an outage and were handed back (sought to) to be handled again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


def value_decoder(parse: Callable[[bytes], E]) -> Decoder[E]:
    """A decoder that reads the record's value only (most topics carry plain JSON events)."""
    return lambda value, _headers, _position: parse(value)


def decode_record(
    decode: Decoder[E], value: bytes | None, headers: Headers | None, position: RecordPosition | None = None
) -> E | Rejection:
    """The record's event, or why it is not one. Never raises an ``Exception``.

    Every ``Exception`` a decoder raises is a reason, deliberately: besides invalid input (pydantic's
    ``ValidationError``, ``ValueError``), ``RecursionError`` (deeply nested JSON in a parser that
    recurses) and ``MemoryError`` (a value too large to decode) are the record's fault, and a decoder's
    own bug must not stop the consumer either. The rest of ``BaseException`` (``KeyboardInterrupt``,
    ``SystemExit``, cancellation) is not about the record and stops the loop as it should.
    """
    if value is None:
        return Rejection("invalid event: the record has no value (a tombstone)")
    try:
        return decode(value, headers or [], position)
    except ValidationError as exc:
        return Rejection(bounded_reason(f"invalid event: {describe_validation_error(exc)}"))
    except ValueError as exc:  # UnicodeDecodeError and json's JSONDecodeError included
        return Rejection(bounded_reason(f"invalid event: {exc}"))
    except Exception as exc:  # noqa: BLE001 - RecursionError, MemoryError, a decoder's bug: see the docstring
        return Rejection(bounded_reason(f"invalid event: {type(exc).__name__}: {exc}"))


def _utf8_text(data: bytes, limit: int) -> tuple[str, bool]:
    """At most ``limit`` bytes of ``data`` as text (invalid bytes replaced), and whether it was cut."""
    cut = len(data) > limit
    # Incremental: a multi-byte character split by the cut is dropped rather than shown as U+FFFD.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(data[:limit], final=not cut), cut


def bounded_payload(value: bytes, limit: int = DEAD_LETTER_PAYLOAD_BYTES) -> tuple[str, bool]:
    """The beginning of ``value`` as text whose JSON encoding takes at most ``limit`` bytes, and whether it
    was cut. Invalid UTF-8 becomes U+FFFD (3 bytes) and control characters ``\\uXXXX`` (6): when these
    make the text's JSON longer than the bytes it came from, it is cut further, in proportion (a few
    encodings, not a search: the result fits, close to the bound)."""
    text, cut = _utf8_text(value, limit)
    size = len(orjson.dumps(text))
    while size > limit and text:
        text, cut = text[: max(0, min(len(text) - 1, int(len(text) * (limit - 2) / size)))], True
        size = len(orjson.dumps(text))
    return text, cut


def dead_letter_headers(headers: Headers | None) -> tuple[list[DeadLetterHeader] | None, bool]:
    """The headers a dead letter tells of its source record, and whether any was cut or left out: names and values
    as text (invalid UTF-8 replaced), each cut (:data:`DEAD_LETTER_HEADER_NAME_BYTES`,
    :data:`DEAD_LETTER_HEADER_VALUE_BYTES`), in order up to :data:`DEAD_LETTER_HEADERS_BYTES` in all. Headers may
    carry credentials: the value of one named like a credential (:func:`shared.domain.secret_names.secret_name`:
    ``Authorization``, ``*token*``, ``*key``, ...) is :data:`~shared.domain.masking.MASK`, and credentials in the
    others are masked by their shape (``Bearer ***``, ``https://user:***@host``). Never raises an ``Exception``."""
    if not headers:
        return None, False
    kept: list[DeadLetterHeader] = []
    cut = False
    size = 0
    for raw_name, raw_value in headers:
        name, name_cut = bounded_payload(str(raw_name).encode("utf-8", "replace"), DEAD_LETTER_HEADER_NAME_BYTES)
        value: str | None = None
        value_cut = False
        if raw_value is not None:
            if secret_name(name):
                value = MASK
            else:
                value, value_cut = bounded_payload(bytes(raw_value), DEAD_LETTER_HEADER_VALUE_BYTES)
                value = mask_credential_shapes(value, MASK)
        size += len(orjson.dumps(name)) + (len(orjson.dumps(value)) if value is not None else 4)
        if size > DEAD_LETTER_HEADERS_BYTES:
            return kept, True
        kept.append(DeadLetterHeader(name=name, value=value))
        cut = cut or name_cut or value_cut
    return kept, cut


def dead_letter_record(
    record: Consumed,
    reason: str,
    *,
    service: str,
    dead_letter_topic: str,
    payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES,
) -> Outgoing:
    """The dead letter of ``record``, bounded whatever the record: the reason cut to
    :data:`~shared.events.REASON_MAX_CHARS`, the payload to ``payload_bytes`` of JSON (``0``: none), the key to
    :data:`KEY_MAX_BYTES`, the headers as :func:`dead_letter_headers` tells them; the value's size and SHA-256
    always. Never raises an ``Exception``."""
    value = record.value
    payload: str | None = None
    truncated = False
    if value is not None and payload_bytes > 0:
        payload, truncated = bounded_payload(value, payload_bytes)
    elif value:
        truncated = True
    common: dict[str, Any] = {
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "service": service,
        "payload_size": None if value is None else len(value),
        "payload_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
    }
    try:
        headers, headers_truncated = dead_letter_headers(record.headers)
        letter = DeadLetter(
            reason=bounded_reason(reason),
            payload=payload,
            payload_truncated=truncated,
            headers=headers,
            headers_truncated=headers_truncated,
            **common,
        ).to_bytes()
    except Exception as exc:  # noqa: BLE001 - the last resort: a letter without the parts that would not encode
        letter = DeadLetter(
            reason=f"(the reason could not be encoded: {type(exc).__name__})", payload_truncated=True, **common
        ).to_bytes()
    if record.key:
        key, _ = _utf8_text(record.key, KEY_MAX_BYTES)
    else:
        key = f"{record.topic}:{record.offset}"
    return Outgoing(dead_letter_topic, key, letter)


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, field-naming summary of a pydantic error (no input values: they may hold secrets)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(p) for p in error["loc"]) or "(record)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


@dataclass
class _Letter:
    """A record to dead-letter instead of handling, and why (logged and counted when decided)."""

    record: Any
    reason: str
    #: How much of the value it carries; 0 once the broker refused it as too large.
    payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES
    #: The headers carrying the trace of the record's handling (the letter continues it).
    trace: ProducedHeaders = ()


@dataclass
class _PendingRound(Generic[E]):
    """A poll's records handed to the round handler, their outcomes not produced yet."""

    polled: dict[TopicPartition, list[Any]]
    #: The held records due (first), then the polled ones.
    records: list[Any]
    #: How many of ``records`` are held records handed to the handler again.
    again: int
    #: Per record: its dead letter when it did not decode; the handler's result is put in place of the others.
    outcomes: list[list[Outgoing] | _Letter | BaseException]
    #: The decoded events handed to the handler (None: none decoded), and the index of each one's record.
    events: Round[E] | None
    indexes: list[int]
    #: Partitions revoked while the round was in flight: nothing of them is committed (their next owner reads
    #: them again from the committed offset).
    revoked: set[TopicPartition] = field(default_factory=set)
    #: Partitions revoked while the round was in flight and given back to this consumer, which kept its position of
    #: them: committed after all (nothing before that position is read again), but never past that position (the
    #: records from there are read again: a held one sought back to).
    given_back: dict[TopicPartition, int] = field(default_factory=dict)
    #: Partitions a rebalance revoked and did not give back (a later one may, but records before its position may
    #: have been read again since): nothing of them is committed or remembered by this round, ever.
    gone: set[TopicPartition] = field(default_factory=set)
    #: Of those, the ones read again from the committed offset (assigned anew, or another consumer's): this round
    #: holds none of their records (a hold would cap the commits of whoever reads them now).
    read_anew: set[TopicPartition] = field(default_factory=set)
    #: The handler's results, once handed to it on a worker thread (rounds in flight).
    results: Future[Sequence[list[Outgoing] | BaseException]] | None = None
    #: The records settled (their outcomes handed to the producer), and the producer's answers; None before, or
    #: when the whole round is handed back.
    settled: list[tuple[Any, list[Outgoing] | _Letter]] = field(default_factory=list)
    sending: _Sending | None = None
    #: Per index in ``records``: a record read again while an earlier round in flight, given here, handles it (its
    #: partition sought back by a rebalance): not handed to the handler, but settled as that round settles it.
    #: Emptied once the round is sent: a chain of rounds read again after rebalances in a row would otherwise stay
    #: in memory.
    copies: dict[int, _PendingRound[E]] = field(default_factory=dict)
    #: The records this round held again (:class:`HoldRecord`), with when they are due (for their copies).
    held_again: dict[tuple[TopicPartition, int], float] = field(default_factory=dict)

    def handled_keys(self) -> list[tuple[TopicPartition, int]]:
        """The records this round hands to the handler (its copies are another round's), as it starts."""
        return [record_key(record) for index, record in enumerate(self.records) if index not in self.copies]

    def settled_keys(self) -> set[tuple[TopicPartition, int]]:
        """The records this round settled (once sent: :meth:`ConsumerLoop._send_round`)."""
        return {record_key(record) for record, _ in self.settled}

    def own(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """``offsets`` but those of partitions read anew since the round began (never sought back by it)."""
        return {partition: offset for partition, offset in offsets.items() if partition not in self.read_anew}

    def first_offsets(self) -> dict[TopicPartition, int]:
        """Per partition polled, the round's first record (where to read again when it is handed back whole)."""
        return {partition: batch[0].offset for partition, batch in self.polled.items() if batch}


@dataclass
class _Sending:
    """Records' outcomes handed to the producer: per record, its records' futures (or what ``send()`` raised at
    once); and the dead letters decided, produced once the others are acknowledged."""

    produced: list[tuple[Any, list[Any]]]
    letters: list[_Letter]

    #: Whether :meth:`call_back` was asked already, and what it answered.
    calling_back: bool | None = None

    def answered(self) -> bool:
        """Whether the broker has answered for every record (acknowledged or refused)."""
        return all(
            isinstance(flight, Exception) or bool(getattr(flight, "is_done", True))
            for _, flights in self.produced
            for flight in flights
        )

    def call_back(self, answer: Callable[[object], None]) -> bool:
        """Have ``answer`` called as the broker answers each record not answered yet (once per sending, whatever
        the calls); False when a record's future cannot call back (not a kafka-python future)."""
        if self.calling_back is None:
            self.calling_back = True
            for _, flights in self.produced:
                for flight in flights:
                    if isinstance(flight, Exception) or getattr(flight, "is_done", True):
                        continue
                    add_both = getattr(flight, "add_both", None)
                    if add_both is None:
                        self.calling_back = False
                    else:
                        add_both(answer)
        return self.calling_back


def _next_to_send(window: Iterable[_PendingRound[Any]]) -> _PendingRound[Any] | None:
    """The next round to send: the first still with the handler (those before it are sent); None when none is."""
    return next((pending for pending in window if pending.results is not None), None)


class _RecordTrace:
    """The span a record is handled in, its context, and (once asked) the headers that carry it."""

    __slots__ = ("_headers", "context", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = in_span(span)
        self._headers: ProducedHeaders | None = None

    @property
    def headers(self) -> ProducedHeaders:
        if self._headers is None:
            self._headers = kafka_headers(self.span)
        return self._headers


class ConsumerLoop(Generic[E]):
    """Consume ``consumer``'s topics, handling each record at least once: one by one with ``handler``, or a
    poll's records at once with ``handle_round`` (exactly one of the two).

    A record that cannot be decoded or handled becomes a dead letter on ``dead_letter_topic`` (at most
    ``dead_letter_payload_bytes`` of its value); producing a dead letter is attempted
    ``dead_letter_attempts`` times, ``dead_letter_backoff_seconds`` apart (doubling), then given up.

    ``rounds_in_flight`` (round handlers only) is how many polls' rounds may be handled at once: with 2 or more,
    ``handle_round`` runs on worker threads (it must allow concurrent calls) while the loop polls and decodes the
    next round and produces and commits the last (:mod:`shared.kafka.round_window`); 1 handles a poll's round
    before the next poll. Either way, outcomes are produced and offsets committed in the order of the polls.

    ``outage_probe`` makes, for each wait after a database outage, the probe that ends it early once the service's
    databases answer again (:func:`shared.database_probe.database_outage_probe`); without it, the backoff runs its
    course.
    """

    def __init__(
        self,
        *,
        service: str,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        decode: Decoder[E],
        dead_letter_topic: str,
        handler: Callable[[E], list[Outgoing]] | None = None,
        retry_attempts: int = 5,
        retry_max_wait: float = 30.0,
        poll_timeout_ms: int = 500,
        periodic: Callable[[], list[Outgoing]] | None = None,
        periodic_seconds: float = 30.0,
        handle_round: RoundHandler[E] | None = None,
        priority_topics: list[str] | None = None,
        dead_letter_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES,
        dead_letter_attempts: int = DEAD_LETTER_ATTEMPTS,
        dead_letter_backoff_seconds: float = DEAD_LETTER_BACKOFF_SECONDS,
        health: Health | None = None,
        rounds_in_flight: int = 1,
        stopping: threading.Event | None = None,
        outage_probe: OutageProbe | None = None,
    ) -> None:
        if (handler is None) == (handle_round is None):
            raise ValueError("give a consumer loop exactly one of handler and handle_round")
        if rounds_in_flight < 1 or (handle_round is None and rounds_in_flight > 1):
            raise ValueError("rounds_in_flight is 1, or more with a round handler")
        self.service = service
        #: Records the next poll may take (None: the consumer's ``max_poll_records``); a round handler whose
        #: records vary in cost sets it (the dispatcher: records carry one request or dozens).
        self.poll_records: Callable[[], int] | None = None
        #: Held records due a round takes at most (None: the round's size less one, polled records making up the
        #: rest); a round handler that starts its due records together and hands back what it has not finished
        #: sets more (the extractor: a burst's runs due at one instant are started in a round or two).
        self.held_round_records: int | None = None
        self.consumer = consumer
        self.producer = producer
        self.decode = decode
        self.handler = handler
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_payload_bytes = dead_letter_payload_bytes
        self.dead_letter_attempts = max(1, dead_letter_attempts)
        self.dead_letter_backoff_seconds = dead_letter_backoff_seconds
        # Built once: the policy is the same for every record (and the loop is single-threaded).
        self._retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(retry_attempts),
            wait=wait_random_exponential(multiplier=0.5, max=retry_max_wait),
            reraise=True,
        )
        self.poll_timeout_ms = poll_timeout_ms
        # Work to do now and then between polls (sweeps), on the loop's own thread: no locking needed.
        self.periodic = periodic
        self.periodic_seconds = periodic_seconds
        self._next_periodic = time.monotonic() + periodic_seconds
        #: Set to stop the loop (its signal handlers, or the process's stop event when given one).
        self.stopping = stopping if stopping is not None else threading.Event()
        # Topics most urgent first: while one yields records, the partitions of later ones are paused.
        self.priority_topics = priority_topics or []
        # A poll's records handled together, concurrently (the dispatcher's HTTP calls), instead of one by one.
        self.handle_round = handle_round
        #: Records the round handler held back (:class:`HoldRecord`), handled again when due.
        self.held = HeldRecords(service, priority_topics=self.priority_topics)
        #: True while the loop waits out a dependency (its last poll was handed back).
        self.interrupted = False
        #: Makes the probe of a wait after a database outage (None: the loop does not know the service's databases).
        self.outage_probe = outage_probe
        self._next_group_check = 0.0
        #: Told when the loop comes round and when it waits out a dependency (the /livez and /readyz probes).
        self.health = health or Health(stall_seconds=float("inf"))
        group = getattr(consumer, "config", {}).get("group_id") or ""
        self._lag = ConsumerLagSeries(service, str(group))
        self._group = str(group)
        #: The span of each record in hand (by the record's id), ended once its outcome is settled.
        self._traces: dict[int, _RecordTrace] = {}
        #: The rounds being handled while the loop polls the next (None: one round at a time).
        self._window: RoundWindow[_PendingRound[E]] | None = None
        #: Set as a round in flight moves on (its handling done, its outcomes answered by the broker): ends the loop's
        #: wait before its next poll (:meth:`_wait_for_rounds`).
        self._moved_on = threading.Event()
        #: How long the loop waits for that before its next poll while rounds are in flight (milliseconds; 0: polls at
        #: once, its last poll brought records).
        self._quiet_wait_ms = 0
        #: Whether a partition not paused had records not read yet at the last turn (its high-water mark, from the last
        #: fetch response, past its position): the loop then polls rather than waits (see :meth:`_record_lag`).
        self._backlog = False
        if handle_round is not None and rounds_in_flight > 1:
            self._window = RoundWindow(rounds_in_flight, f"{service}-rounds")
        #: The records handed to the handler by a round in flight, and the last round handed each: not handed to it
        #: twice at once (a held one due again, or one read again after a rebalance sought its partition back: see
        #: _start_round).
        self._in_flight: dict[tuple[TopicPartition, int], _PendingRound[E]] = {}
        # An interruption met by a round, waiting for the rounds in flight after it to be settled: per partition,
        # the first record to read again; the error to raise then; whether producing failed (the broker away).
        self._handed_back: dict[TopicPartition, int] = {}
        self._interruption: BaseException | None = None
        self._produce_failed = False
        #: With rounds in flight, commits are sent without waiting (the loop goes on); the offsets sent so, per
        #: partition, committed again and waited for before the consumer closes.
        self._committed_async: dict[TopicPartition, int] = {}
        #: The partitions revoked by a rebalance not over yet (kafka-python assigns them again at a later poll): a
        #: round started meanwhile commits nothing of them either, unless they are given back.
        self._revoking: set[TopicPartition] = set()
        #: Offsets of partitions revoked by the rebalance under way, not committed or committed without waiting
        #: (the rebalance may have refused it), and those to commit at the next turn: the partitions given back.
        self._revoked_commits: dict[TopicPartition, int] = {}
        self._commit_again: dict[TopicPartition, int] = {}
        #: Offsets owed: not committed because the partition's next fetch was not known (an offset reset in flight) or
        #: could not be told (:meth:`_no_further_than_read`), or committed without waiting and refused
        #: (:meth:`_commit_answered`); committed at a later turn (:meth:`_commit_deferred`).
        self._commit_later: dict[TopicPartition, int] = {}
        #: Commits refused since the last one accepted (the first logged as a warning, the rest at debug level), the
        #: wait before what is owed is sent again (0: none), and when that wait ends (time.monotonic).
        self._refused_in_a_row = 0
        self._owed_backoff = 0.0
        self._owed_due = 0.0
        self._position_unreadable_logged = False
        # Every series at 0 from the start: a counter that first appears at 1 is invisible to increase().
        DEAD_LETTER_FAILURES.labels(service=service)
        subscribed = getattr(consumer, "subscription", lambda: None)()
        for topic in subscribed or ():
            RECORDS_DEAD_LETTERED.labels(service=service, topic=topic)
        if handle_round is not None and subscribed:
            # The holds of a revoked partition are forgotten as it is revoked (the subscription is unchanged), and the
            # partition sought back to its first held record, read again should the rebalance leave it here.
            listener = ForgetRevoked(
                self.held,
                self._revoked,
                seek=lambda part, offset: consumer.seek(part, offset),
                position=lambda part: fetch_position(consumer, part),
                assigned=self._assigned,
            )
            consumer.subscribe(topics=sorted(subscribed), listener=listener)
        #: Whether this loop hears of rebalances (:meth:`_revoked`, :meth:`_assigned`): only then is a commit refused
        #: while waiting owed (its partition may have moved; the listener moves what is owed of it aside).
        self._listening = handle_round is not None and bool(subscribed)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the record in hand, commit, and stop the loop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())

    def run(self) -> None:
        """Poll and handle until stopped. A poll interrupted by an outage is waited out (backing off) and its
        records handled again; only a fatal Kafka error (see :func:`is_fatal`) raises, with its reason logged."""
        log.info("consumer loop started", service=self.service, topics=sorted(self.consumer.subscription() or []))
        interruptions = 0
        self.health.waiting(NOT_IN_GROUP, GROUP)  # until a heartbeat is answered (see _check_group)
        try:
            while not self.stopping.is_set():
                self.health.beat()
                self._check_group()
                try:
                    self.poll_once()
                except Exception as exc:
                    if is_fatal(exc):
                        log.error(
                            "consumer stopped: Kafka refuses this configuration",
                            service=self.service,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                        raise
                    interruptions += 1
                    self._wait_out(exc, interruptions)
                else:
                    if interruptions:
                        log.info("consumer resumed", service=self.service, after_interruptions=interruptions)
                        INTERRUPTED.labels(service=self.service).set(0)
                        self.interrupted = False
                        self.health.recovered()
                    interruptions = 0
                self.run_periodic()
            self._finish_in_flight()
        finally:
            if self._window is not None:
                if len(self._window):
                    self.stopping.set()  # the handler abandons what it still has (their records are read again)
                self._window.close()
            self._confirm_commits()
            self._lag.clear()
            self.consumer.close()
            # Rounds settled waited for their records: only an error ending the loop leaves some (not committed:
            # read again), and they are not waited for until the delivery timeout.
            close_producer(self.producer)
            log.info("consumer loop stopped", service=self.service)

    def _check_group(self) -> None:
        """Every :data:`GROUP_CHECK_SECONDS`, tell the health whether the consumer is in its group: a heartbeat
        answered by the group coordinator within the session timeout (none yet: not joined; none for longer:
        the broker is unreachable or the group is rebalancing)."""
        now = time.monotonic()
        if now < self._next_group_check:
            return
        self._next_group_check = now + GROUP_CHECK_SECONDS
        silent = heartbeat_silence_seconds(self.consumer)
        if silent is None:
            self.health.recovered(GROUP)  # the client does not say: no evidence against it
            return
        session = float(getattr(self.consumer, "config", {}).get("session_timeout_ms", 10_000)) / 1000
        if silent > session:
            # kafka-python forgets the last answer when it loses the coordinator: one reason for both cases.
            self.health.waiting(NOT_IN_GROUP, GROUP)
        else:
            self.health.recovered(GROUP)

    def _wait_out(self, error: BaseException, interruptions: int) -> None:
        """Log and count an interrupted poll, then wait before the next (the records were handed back): the
        backoff, ended early once the broker or the databases that interrupted answer again (see :meth:`_probe`)."""
        cause = error.cause if isinstance(error, RoundInterrupted) else error
        delay = interruption_backoff(interruptions)
        ROUNDS_INTERRUPTED.labels(service=self.service, cause=type(cause).__name__).inc()
        INTERRUPTED.labels(service=self.service).set(1)
        self.interrupted = True
        self.health.waiting(describe(cause))
        log.warning(
            "poll interrupted: its records will be handled again",
            service=self.service,
            error=describe(cause),
            in_a_row=interruptions,
            retry_in_seconds=delay,
        )
        probe = self._probe(cause) if delay > INTERRUPTION_PROBE_SECONDS else None
        try:
            if wait_for_answer(delay, probe, self.stopping):
                log.info("dependency answers again: polling before the backoff is over", service=self.service)
        finally:
            close = getattr(probe, "close", None)
            if callable(close):
                close()  # the wait is over: no more checks of the dependency

    def _probe(self, cause: BaseException) -> Probe | None:
        """What ends the wait after an interruption by ``cause`` early: for a retriable Kafka error (the broker
        unreachable, a request timed out), the consumer's broker answering metadata again after it was seen away
        (:class:`MetadataAnswered`); for a database outage, the databases answering again after they were seen away
        (what ``outage_probe`` makes: None without it). None for an error the broker answers (it is not away: a
        refusal repeats): that wait runs its course, as does any wait whose probe cannot be made."""
        if is_outage(cause):
            if self.outage_probe is None:
                return None
            try:
                return self.outage_probe()
            except Exception as exc:  # noqa: BLE001 - no evidence either way: the plain backoff
                log.warning("no database probe: the backoff runs its course", service=self.service, error=describe(exc))
                return None
        if not is_interruption(cause):
            return None
        try:
            return MetadataAnswered(self.consumer)
        except Exception as exc:  # noqa: BLE001 - a client without that API (a stand-in): the plain backoff
            log.debug("no broker probe: the backoff runs its course", service=self.service, error=str(exc))
            return None

    def run_periodic(self, *, force: bool = False) -> None:
        """Run the periodic task if it is due (or ``force``); its failure is logged, never fatal."""
        if self.periodic is None or (not force and time.monotonic() < self._next_periodic):
            return
        self._next_periodic = time.monotonic() + self.periodic_seconds
        try:
            self.send_all(self.periodic())
        except Exception:
            log.exception("periodic task failed", service=self.service)

    def poll_once(self) -> int:
        """Poll, process and commit one batch of records; return how many were processed. The consumer's lag
        per assigned partition is recorded after the round, however it ended.

        Raises :class:`RoundInterrupted` (or the error itself) when an outage stopped the poll midway: what
        was settled is committed, the rest handed back for the next poll.
        """
        if self._window is not None:
            try:
                return self._pipeline_step(self._window)
            finally:
                self._record_lag()
        try:
            return self._poll_round()
        finally:
            self._end_traces()
            self._record_lag()

    def _record_lag(self) -> None:
        """Set ``member_export_consumer_lag`` for each assigned partition from what the consumer already knows:
        the high-water mark its last fetch response brought, and its position (no request is sent: the
        position is only read where a fetch answered, which needs a position). Never raises an ``Exception``:
        a metric must not stop the loop."""
        try:
            lags: dict[tuple[str, int], int | None] = {}
            backlog = False
            paused = set(self.consumer.paused()) if self._window is not None else set()
            for partition in self.consumer.assignment():
                highwater = self.consumer.highwater(partition)
                position = None if highwater is None else self.consumer.position(partition, timeout_ms=0)
                lag = lags[(partition.topic, partition.partition)] = partition_lag(highwater, position)
                backlog = backlog or (bool(lag) and partition not in paused)
            self._backlog = backlog
            self._lag.update(lags)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile, or closing: the next round tells again
            self._backlog = False
            log.debug("consumer lag not recorded", service=self.service, error=f"{type(exc).__name__}: {exc}")

    def _poll(self, timeout_ms: int) -> tuple[dict[TopicPartition, list[Any]], list[Any]]:
        """Poll (waiting up to ``timeout_ms`` for records): the records polled, and the held records due."""
        # kafka-python 3.0 can finish a group join between two polls and never take it: asked for again here.
        revive_lost_rejoin(self.consumer, self.service)
        limit = self.poll_records() if self.poll_records is not None else None
        size = limit or int(getattr(self.consumer, "config", {}).get("max_poll_records", 500))
        # The held records due count in the round's size, leaving the poll one record at least (it must be
        # called): a round of ``size`` records (two when ``size`` is 1) however many are due at once.
        due_limit = self.held_round_records if self.held_round_records is not None else max(1, size - 1)
        due = self._held_due(due_limit) if self.handle_round is not None else []
        if due:
            polled = self.consumer.poll(timeout_ms=0, max_records=max(1, size - len(due)))
        else:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=limit)
        if self.priority_topics:
            self._give_way(polled)
        self._restrain_while_holding()
        return polled, due

    def _poll_round(self) -> int:
        polled, due = self._poll(self.poll_timeout_ms)
        self._commit_given_back()
        self._commit_deferred(polled)
        if self.handle_round is not None:
            return self._process_round(polled, self.handle_round, due)
        processed = 0
        done: dict[TopicPartition, int] = {}
        try:
            for partition, records in polled.items():
                for record in records:
                    if self.stopping.is_set():
                        # Hand the rest back: seek so that the next owner (or we, on restart) gets them.
                        self.consumer.seek(partition, record.offset)
                        break
                    self._settle([(record, self._outcome(record))])
                    self._end_traces(record)
                    done[partition] = record.offset + 1
                    processed += 1
        except BaseException:
            self._hand_back({p: done.get(p, batch[0].offset) for p, batch in polled.items() if batch})
            self._commit(done)
            raise
        self._commit(done)
        return processed

    def _give_way(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Pause less urgent topics while a more urgent one has a backlog; resume them once it has none.

        A backlog is seen in the poll, or in the high-water marks that fetch responses bring (no extra
        request): records waiting behind a lower topic's prefetched buffer count too. Records already
        returned from a paused topic are still processed (at most one poll's worth); its prefetched
        records are fetched again after it resumes (its position has not moved), so nothing is skipped.
        """
        ranks = {topic: rank for rank, topic in enumerate(self.priority_topics)}
        assigned = self.consumer.assignment()
        busy = [ranks[p.topic] for p, records in polled.items() if records and p.topic in ranks]
        busy += [ranks[p.topic] for p in assigned if p.topic in ranks and self._has_backlog(p)]
        urgent = min(busy, default=None)
        wanted = {p for p in assigned if urgent is not None and ranks.get(p.topic, -1) > urgent}
        paused = set(self.consumer.paused())
        if paused - wanted:
            self.consumer.resume(*(paused - wanted))
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))

    def _has_backlog(self, partition: TopicPartition) -> bool:
        highwater = self.consumer.highwater(partition)
        if highwater is None:
            return False
        try:
            return bool(highwater > self.consumer.position(partition, timeout_ms=0))
        except Exception:  # noqa: BLE001 - position unknown yet (just assigned): no evidence of a backlog
            return False

    def _process_round(
        self, polled: dict[TopicPartition, list[Any]], handle_round: RoundHandler[E], due: list[Any] | None = None
    ) -> int:
        """Hand a poll's decoded records to ``handle_round`` at once, produce every result, then commit them all.

        The poll is the unit of backpressure: the next poll waits until this one's records all have
        their outcome, so a slow endpoint slows consumption instead of buffering the topic in memory.
        """
        pending = self._start_round(polled, due or [])
        if pending is None:
            return 0
        results = self._round_results(handle_round, pending.events) if pending.events is not None else []
        try:
            self._send_round(pending, results)
            settled = self._confirm_round(pending)
        except BaseException:
            self._end_interruption(raise_it=False)
            raise
        self._end_interruption()
        return settled

    def _pipeline_step(self, window: RoundWindow[_PendingRound[E]]) -> int:
        """One turn of the loop with rounds in flight. Rounds move on in the order they were polled: a round whose
        handling is done has its outcomes handed to the producer; the oldest, once the broker acknowledged them, is
        committed (without waiting) and leaves the window. Nothing here waits, but for the oldest round while the
        window is full, an interruption is handed back, or the loop stops. Then, if the window has room, the next
        round is polled and handed to the handler. Returns how many records were settled.

        An interruption met by a round is raised once every round in flight has been settled (their records of the
        interrupted partitions after the first handed back are not settled: they are read again), with the records
        handed back sought to: no round commits past a record handed back.
        """
        settled = 0
        while (oldest := window.oldest()) is not None:
            waiting = window.full or self._interruption is not None or self.stopping.is_set()
            unsent = _next_to_send(window)
            if unsent is not None and unsent.results is not None and (unsent.results.done() or unsent is oldest):
                if not unsent.results.done() and not waiting:
                    break
                results, unsent.results = unsent.results.result(), None
                self._send_round(unsent, results)
                continue
            if oldest.results is None and (waiting or oldest.sending is None or oldest.sending.answered()):
                window.pop()
                for record in oldest.records:  # a copy's key is an earlier round's: never this one's
                    key = record_key(record)
                    if self._in_flight.get(key) is oldest:  # not handed to a later round since (held, due again)
                        del self._in_flight[key]
                try:
                    settled += self._confirm_round(oldest)
                finally:
                    self._end_traces_of(oldest.records)
                continue
            break
        if self._interruption is not None or self.stopping.is_set():
            if not len(window):
                self._end_interruption()
            return settled
        # While rounds are in flight, the poll does not wait: the loop waits for them to move on instead, once its last
        # poll found nothing (a round done meanwhile moves on at once).
        # Records known to wait in Kafka (a backlog) are polled as before: a poll returns as soon as they are fetched.
        if not len(window):
            timeout_ms = self.poll_timeout_ms
        elif self._backlog:
            self._quiet_wait_ms, timeout_ms = 0, min(self.poll_timeout_ms, IN_FLIGHT_POLL_MS)
        else:
            self._wait_for_rounds(window)
            timeout_ms = 0
        polled, due = self._poll(timeout_ms)
        self._commit_given_back()
        self._commit_deferred(polled)
        pending = self._start_round(polled, due)
        if pending is None:
            if len(window):
                self._quiet_wait_ms = min(max(2 * self._quiet_wait_ms, IN_FLIGHT_POLL_MS), IN_FLIGHT_WAIT_MAX_MS)
            return settled
        self._quiet_wait_ms = 0
        handle_round, events = self.handle_round, pending.events
        assert handle_round is not None  # a window is built for round handlers only
        self._in_flight.update(dict.fromkeys(pending.handled_keys(), pending))
        pending.revoked.update(self._revoking)  # started while a rebalance goes on (held records due, no poll's)
        pending.results = window.start(
            pending, lambda: self._round_results(handle_round, events) if events is not None else []
        )
        pending.results.add_done_callback(self._move_on)
        return settled

    def _move_on(self, _: object = None) -> None:
        """A round in flight moved on (called on the handler's or the producer's thread): the loop's wait ends."""
        self._moved_on.set()

    def _wait_for_rounds(self, window: RoundWindow[_PendingRound[E]]) -> None:
        """Before a poll while rounds are in flight, when the last poll found nothing: wait up to
        ``_quiet_wait_ms`` for the next round to send to be done, or the broker to answer the oldest round's outcomes,
        whichever the loop waits for (a round's end or answer is acted on at once, a record arriving meanwhile is
        polled at the wait's end). A stop meanwhile waits for the rounds in flight all the same (they are settled
        before the loop ends): their end ends this wait.

        While records are held (one may fall due), or an outcome's acknowledgement cannot call back, the wait is no
        longer than :data:`IN_FLIGHT_POLL_MS`, the loop's turn before."""
        wait_ms = self._quiet_wait_ms
        if not wait_ms:
            return
        if len(self.held):
            wait_ms = min(wait_ms, IN_FLIGHT_POLL_MS)
        self._moved_on.clear()  # before looking: a round moving on from here on ends the wait
        unsent = _next_to_send(window)
        if unsent is not None and unsent.results is not None and unsent.results.done():
            return
        oldest = window.oldest()
        if oldest is not None and oldest.results is None and oldest.sending is not None:
            # The callbacks first, then the look: an answer arriving in between would otherwise wake no one (its
            # record skipped as answered by call_back, after answered() saw it not) until the wait's end.
            calls_back = oldest.sending.call_back(self._move_on)
            if oldest.sending.answered():
                return
            if not calls_back:
                wait_ms = min(wait_ms, IN_FLIGHT_POLL_MS)
        self._moved_on.wait(wait_ms / 1000)

    def _finish_in_flight(self) -> None:
        """The loop stops: settle the rounds still in flight (what their handler abandoned is handed back)."""
        if self._window is None or not len(self._window):
            return
        try:
            self._pipeline_step(self._window)  # stopping: settles every round, polls none
        except Exception as exc:
            if is_fatal(exc):
                raise
            log.info("records handed back as the loop stops", service=self.service, error=describe(exc))

    def _commit_given_back(self) -> None:
        """Commit, without waiting, what is owed of the partitions a rebalance during the last poll gave back (sent in
        the new generation). Each offset was capped at the records held when it was settled, and at the position
        kept, which is before any record held since (read from there)."""
        if self._commit_again:
            again, self._commit_again = self._commit_again, {}
            self._commit(again, wait=False)

    def _revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked during a poll: the rounds in flight commit nothing of them (a rebalance), unless the
        rebalance gives them back (:meth:`_assigned`)."""
        self._revoking.update(partitions)
        for pending in self._window or ():
            pending.revoked.update(partitions)
        for partition in partitions:
            # A commit sent just before, or one to send again after an earlier rebalance of the same poll (a second
            # rebalance may begin in the poll that ended the first): kept until this one ends.
            for offsets in (self._committed_async, self._commit_again, self._commit_later):
                offset = offsets.pop(partition, None)
                if offset is not None:
                    self._revoked_commits[partition] = max(offset, self._revoked_commits.get(partition, offset))

    def _assigned(self, kept: dict[TopicPartition, int], unknown: set[TopicPartition] | None = None) -> None:
        """Partitions given back as a rebalance ends, with the position this consumer kept of them (kafka-python
        keeps it; none after the group lost them). Nothing before that position is read again, so what this
        consumer settled of them before it must still be committed: the rounds in flight commit their records of
        them after all, never past the position, and what was settled while the rebalance went on (not committed)
        or committed just before it (the rebalance may have refused it) is committed at the next turn (otherwise a
        record settled is never committed: handled again after a restart, its lag never back to 0).

        A partition revoked and not given back by the rebalance that revoked it is gone for the rounds in flight then,
        whatever a later rebalance does (it may have been read again from a lower offset meanwhile). One whose
        position cannot be told (``unknown``) is neither given back nor read anew: gone for those rounds, but its
        holds are kept (should its position have been kept, the held records are read from nowhere else)."""
        unknown = unknown or set()
        self._owed_backoff = self._owed_due = 0.0  # a new generation: what is owed is sent at the next turn
        for pending in self._window or ():
            for partition in (pending.revoked & self._revoking & kept.keys()) - pending.gone:
                pending.revoked.discard(partition)
                pending.given_back[partition] = min(kept[partition], pending.given_back.get(partition, kept[partition]))
            newly_gone = pending.revoked - pending.gone
            pending.gone |= newly_gone
            pending.read_anew |= newly_gone - unknown
        for partition, offset in self._revoked_commits.items():
            if partition in kept:
                self._commit_again[partition] = min(offset, kept[partition])
        self._revoked_commits = {}
        # What rounds settled while the rebalance went on is remembered as settled (the records held among them
        # aside) to commit once those are settled: never past where a partition given back is read again from (its
        # holds forgotten, sought back to the first), and not at all for one not given back (read from the committed
        # offset, with any hold a round made of it meanwhile).
        for partition in self._revoking:
            if partition in kept:
                self.held.settled_no_further(partition, kept[partition])
        self.held.forget(self._revoking - kept.keys() - unknown)
        self._revoking = set()  # the rebalance is over

    def _start_round(self, polled: dict[TopicPartition, list[Any]], due: list[Any]) -> _PendingRound[E] | None:
        """Decode a poll's records (the held ones due first) into a round for the handler; None when there is
        nothing to handle, or the loop is stopping (the records are then sought back to)."""
        if self.stopping.is_set():
            for partition, records in polled.items():
                if records:
                    self.consumer.seek(partition, records[0].offset)
            return None
        records = self._with_held_due(due, [record for batch in polled.values() for record in batch])
        if not records:
            return None
        again = sum(1 for record in records if self.held.is_held(record))  # held ones first: consumed before
        outcomes: list[list[Outgoing] | _Letter | BaseException] = [[] for _ in records]
        # A rebalance during a poll seeks a partition back to its first held record (ForgetRevoked): the records from
        # there that a round in flight handles are read again. Handing them to the handler now would handle them twice
        # at once (a dispatcher's batch sent twice concurrently): they wait for that round to settle them instead.
        copies: dict[int, _PendingRound[E]] = {}
        if self._in_flight:
            copies = {
                index: earlier
                for index in range(again, len(records))
                if (earlier := self._in_flight.get(record_key(records[index]))) is not None
            }
            if copies:
                log.info(
                    "records read again while a round in flight has them: settled as that round settles them",
                    service=self.service,
                    records=len(copies),
                )
        decoded: list[tuple[int, E]] = []
        for index, record in enumerate(records):
            if index in copies:
                continue  # consumed and decoded once already, by the round handling it
            event = self._decode(record, consumed=index >= again)
            if isinstance(event, _Letter):
                outcomes[index] = event
            else:
                decoded.append((index, event))
        events = None
        if decoded:
            events = Round([event for _, event in decoded], [self._trace_context(records[i]) for i, _ in decoded])
        return _PendingRound(
            polled,
            records,
            again,
            outcomes,
            events,
            [index for index, _ in decoded],
            copies=copies,
        )

    def _send_round(self, pending: _PendingRound[E], results: Sequence[list[Outgoing] | BaseException]) -> None:
        """Decide each of a round's records from the handler's results, and hand the outcomes to the producer.

        A record that met an outage is handed back with every later record of its partition (offsets are committed
        in order), and so are those of a later round in flight: they are noted (:meth:`_hand_back_later`) and sought
        to by :meth:`_end_interruption`. Once producing failed (the broker away), a later round produces nothing.
        """
        if self._produce_failed:
            return  # handed back whole by _confirm_round
        records, outcomes = pending.records, pending.outcomes
        for index, result in zip(pending.indexes, results, strict=True):
            outcomes[index] = result
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException) and is_interruption(outcome):
                # A partition read anew since is read from its committed offset: no seek of this round's (it would
                # skip or repeat what the partition's reader now reads).
                self._hand_back_later(pending.own({TopicPartition(record.topic, record.partition): record.offset}))
                if self._interruption is None:
                    self._interruption = RoundInterrupted(outcome)
        settled: list[tuple[Any, list[Outgoing] | _Letter]] = []
        settled_before = {id(earlier): earlier.settled_keys() for earlier in pending.copies.values()}
        for index, (record, outcome) in enumerate(zip(records, outcomes, strict=True)):
            partition = TopicPartition(record.topic, record.partition)
            first_back = self._handed_back.get(partition)
            if first_back is not None and record.offset >= first_back:
                self.held.release([record])  # read again from the partition
                continue
            if partition in pending.read_anew and not isinstance(outcome, list):
                continue  # read anew by the partition's reader: neither held nor dead-lettered here (no outcome)
            earlier = pending.copies.get(index)
            if earlier is not None:
                # Handled by an earlier round, sent before this one: settled there (its outcome produced there, this
                # round commits it: the earlier round commits nothing of a partition revoked meanwhile), or held again
                # (held here: the rebalance may have forgotten that hold since, and no commit may pass it).
                key = record_key(record)
                if key in settled_before[id(earlier)]:
                    settled.append((record, []))
                elif partition not in pending.read_anew:  # else read anew: nothing of it is this round's now
                    self.held.hold(record, earlier.held_again.get(key, 0.0))
                continue
            if isinstance(outcome, HoldRecord):
                self.held.hold(record, outcome.until)
                pending.held_again[record_key(record)] = outcome.until
                continue
            settled.append((record, self._failure(record, outcome) if isinstance(outcome, BaseException) else outcome))
        pending.settled = settled
        pending.copies.clear()  # settled: the earlier rounds are no longer needed
        pending.sending = self._send(settled)

    def _confirm_round(self, pending: _PendingRound[E]) -> int:
        """Wait for the broker's acknowledgement of a round's outcomes (dead-lettering the records whose own it
        refuses), then commit it; returns how many records were settled. A round after one whose outcomes could not
        be produced (the broker away) is handed back whole, without waiting for its own."""
        firsts = pending.own(pending.first_offsets())
        if self._produce_failed or pending.sending is None:
            self._hand_back_later(firsts)
            return 0
        try:
            self._flush_unanswered(pending.sending)
            self._confirm(pending.sending)
        except Exception as exc:  # noqa: BLE001 - the broker unreachable: raised once the rounds in flight are settled
            self._hand_back_later(firsts)
            self._interruption, self._produce_failed = exc, True  # raised in place of any outage: the broker's away
            return 0
        except BaseException:
            self._hand_back(firsts)
            raise
        done: dict[TopicPartition, int] = {}
        for record, _ in pending.settled:
            partition = TopicPartition(record.topic, record.partition)
            done[partition] = max(done.get(partition, 0), record.offset + 1)  # held ones come first, out of order
        for partition, position in pending.given_back.items():
            if partition in done:
                done[partition] = min(done[partition], position)
        for partition in pending.gone:
            # Revoked by a rebalance that did not give it back: nothing of it is committed or remembered (it is read
            # from the committed offset, by its new owner or this consumer).
            done.pop(partition, None)
        self.held.release([record for record, _ in pending.settled])
        offsets = self.held.commit_offsets(done)
        # A partition handed back is read again from its first record not settled: no commit passes it, even where
        # the records settled before reach further (held records settled around it; a later round in flight that
        # handed back, and so released, a held record before this round's records).
        for partition, first_back in self._handed_back.items():
            if partition in offsets:
                offsets[partition] = min(offsets[partition], first_back)
        for partition in pending.revoked & offsets.keys():
            # Revoked by the rebalance under way: not committed now (its next owner reads it again from the committed
            # offset); kept until the rebalance ends, should it give the partition back (_assigned).
            offset = offsets.pop(partition)
            self._revoked_commits[partition] = max(offset, self._revoked_commits.get(partition, offset))
        self._commit(self._no_further_than_in_hand(pending, offsets), wait=self._window is None)
        return len(pending.settled)

    def _no_further_than_in_hand(
        self, pending: _PendingRound[E], offsets: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """``offsets`` (``pending``'s commit), no further than a record a later round in flight has in hand and
        ``pending`` did not settle: read again since a rebalance or a hand-back sought its partition back, it is past
        the next fetch already (:meth:`_no_further_than_read` no longer stops a commit there), and not settled yet."""
        if self._window is None or not offsets:
            return offsets
        settled_here = pending.settled_keys()
        for later in self._window:
            for record in later.records:
                partition, offset = record_key(record)
                if offset < offsets.get(partition, -1) and (partition, offset) not in settled_here:
                    offsets[partition] = offset
        return offsets

    def _flush_unanswered(self, sending: _Sending) -> None:
        """Send a round's outcomes at once when the loop is about to wait for them and the broker has not answered
        yet: nothing else joins the producer's batches while the loop waits, so waiting out ``linger_ms`` would only
        add it to every round's pause, during which no record is handled (issue 18: the dispatcher's rounds of 500
        member batches). A flush that runs out of time is not a failure here: the records' own futures tell."""
        if sending.answered():
            return
        with suppress(KafkaTimeoutError):
            self.producer.flush(timeout=produce_timeout_seconds(self.producer))

    def _hand_back_later(self, first_offsets: dict[TopicPartition, int]) -> None:
        """Note records to read again from ``first_offsets`` (per partition, the first): sought to once the rounds
        in flight are settled (:meth:`_end_interruption`)."""
        for partition, offset in first_offsets.items():
            self._handed_back[partition] = min(self._handed_back.get(partition, offset), offset)

    def _end_interruption(self, *, raise_it: bool = True) -> None:
        """Seek to the records handed back, then raise the interruption that handed them back (if ``raise_it``)."""
        handed_back, interruption = self._handed_back, self._interruption
        self._handed_back, self._interruption, self._produce_failed = {}, None, False
        self._hand_back(handed_back)
        if interruption is not None and raise_it:
            raise interruption

    def _held_due(self, limit: int | None) -> list[Any]:
        """The held records whose time has come, at most ``limit`` (about those due the longest first): a breaker
        turning half-open makes thousands due at once, and a round must stay within the poll interval. Those
        a round in flight has in hand are not due again meanwhile (:meth:`_in_hand`)."""
        if not len(self.held):
            return []
        try:
            assigned = set(self.consumer.assignment())
        except Exception:  # noqa: BLE001 - closing: nothing is due
            return []
        if not self._in_flight:
            return self.held.due(time.monotonic(), assigned, limit)
        # Only the held records a round in flight has are passed over: fetch that many more, not one per record in
        # flight (up to rounds x batch: thousands of heap moves a poll while a breaker's backlog is due).
        wanted = None if limit is None else limit + self.held.count_held(self._in_flight)
        due = self.held.due(time.monotonic(), assigned, wanted)
        return [record for record in due if not self._in_hand(record)][:limit]

    def _in_hand(self, record: Any) -> bool:
        """Whether a round in flight has ``record`` in hand: with the handler, or settled (its outcome not committed
        yet); not once it held the record again (due then as it said)."""
        key = record_key(record)
        handling = self._in_flight.get(key)
        return handling is not None and (handling.results is not None or key not in handling.held_again)

    def _with_held_due(self, due: list[Any], polled: list[Any]) -> list[Any]:
        """The held records due, then the polled ones (a polled record that is also held, its partition read
        again from the committed offset, is no longer held: it is handled as polled)."""
        if not len(self.held):
            return polled
        self.held.release([record for record in polled if self.held.is_held(record)])
        # Still held: not polled again, nor forgotten by a rebalance during the poll (see _Revoked).
        return [*(record for record in due if self.held.is_held(record)), *polled]

    def _restrain_while_holding(self) -> None:
        """Pause every partition while the held records fill their bound; resume them once they do not."""
        if not self.held.full and not self.held.restrained:
            return
        try:
            assigned = self.consumer.assignment()
            if self.held.full:
                self.consumer.pause(*assigned)
            else:
                self.consumer.resume(*assigned)
        except Exception as exc:  # noqa: BLE001 - a rebalance meanwhile: judged again next round
            log.debug("partitions not paused", service=self.service, error=str(exc))
            return
        self.held.restrained = self.held.full

    @staticmethod
    def _round_results(handle_round: RoundHandler[E], events: list[E]) -> Sequence[list[Outgoing] | BaseException]:
        """``handle_round``'s result per event; when it raises, answers with no sequence, or answers for another
        number of events, that failure is every event's (each is dead-lettered with it rather than the loop
        stopping, or, on a round's worker thread, the round never settling)."""
        try:
            results = handle_round(events)
            count = len(results)
        except Exception as exc:  # noqa: BLE001 - the round's failure becomes each of its records' dead letter
            return [exc] * len(events)
        if count != len(events):
            return [RuntimeError(f"the round handler gave {len(results)} results for {len(events)} records")] * len(
                events
            )
        return results

    def _decode(self, record: Any, consumed: bool = True) -> E | _Letter:
        """The record's event, or its dead letter when it does not decode (never raises an ``Exception``); either
        way the record's span is started (see :meth:`_start_trace`)."""
        if consumed:  # not a held record handed back again
            RECORDS_CONSUMED.labels(service=self.service, topic=record.topic).inc()
        decoded, parent = decoded_in_context(
            lambda: decode_record(self.decode, record.value, record.headers, record), record.headers
        )
        self._start_trace(record, parent)
        if isinstance(decoded, Rejection):
            return self._dead_letter(record, decoded.reason)
        return decoded

    def _outcome(self, record: Any) -> list[Outgoing] | _Letter:
        """What to produce for one record: the handler's records, or a dead letter. Raises only
        :class:`RoundInterrupted`, when the handler met an outage (the record is then handed back)."""
        event = self._decode(record)
        if isinstance(event, _Letter):
            return event
        with attached(self._trace_context(record)):
            try:
                assert self.handler is not None  # one-by-one mode
                return self._retrying(self.handler, event)
            except Exception as exc:  # any other failure of one record becomes its dead letter (logged there)
                if is_interruption(exc):
                    raise RoundInterrupted(exc) from exc  # a dependency is away: handed back, not dead-lettered
                return self._failure(record, exc)

    def _start_trace(self, record: Any, parent: Context | None) -> None:
        """Start the span ``record`` is handled in: a consumer span continuing ``parent``'s trace (a new trace
        without one), named and described as OpenTelemetry's messaging conventions say."""
        key = _utf8_text(record.key, SPAN_KEY_MAX_BYTES)[0] if record.key else ""
        span = start_span(
            f"process {record.topic}",
            parent=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.kafka.message.key": key,
                "messaging.consumer.group.name": self._group,
            },
        )
        self._traces[id(record)] = _RecordTrace(span)

    def _trace_context(self, record: Any) -> Context | None:
        """The context of the span ``record`` is handled in (None before it is decoded)."""
        traced = self._traces.get(id(record))
        return None if traced is None else traced.context

    def _trace_headers(self, record: Any) -> ProducedHeaders:
        """The headers that carry the span ``record`` is handled in, for the records produced for it."""
        traced = self._traces.get(id(record))
        return () if traced is None else traced.headers

    def _end_traces_of(self, records: list[Any]) -> None:
        """End the spans of ``records``."""
        for record in records:
            self._end_traces(record)

    def _end_traces(self, record: Any | None = None) -> None:
        """End the span of ``record``, or of every record in hand."""
        if record is not None:
            traced = self._traces.pop(id(record), None)
            if traced is not None:
                traced.span.end()
            return
        for traced in self._traces.values():
            traced.span.end()
        self._traces.clear()

    def _failure(self, record: Any, exc: BaseException) -> _Letter:
        """The dead letter of a record whose handling raised ``exc``."""
        if isinstance(exc, InvalidInput):
            return self._dead_letter(record, str(exc))
        with attached(self._trace_context(record)):
            log.error(
                "handler failed",
                service=self.service,
                topic=record.topic,
                offset=record.offset,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        # Its message may quote anything (a connection URL, a credential, a member's data): masked and cut.
        return self._dead_letter(record, exception_reason(exc))

    def _dead_letter(self, record: Any, reason: str) -> _Letter:
        """Decide that ``record`` is dead-lettered (counted and logged here, its span marked failed; produced by
        :meth:`_settle`)."""
        reason = bounded_reason(reason)
        RECORDS_DEAD_LETTERED.labels(service=self.service, topic=record.topic).inc()
        traced = self._traces.get(id(record))
        if traced is not None:
            traced.span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {cut_text(reason, 200)}"))
        with attached(self._trace_context(record)):
            log.warning(
                "record dead-lettered", service=self.service, topic=record.topic, offset=record.offset, reason=reason
            )
        return _Letter(record, reason, self.dead_letter_payload_bytes, self._trace_headers(record))

    def _settle(self, outcomes: list[tuple[Any, list[Outgoing] | _Letter]]) -> None:
        """Produce every record's outcome and return once the broker has acknowledged it (the offsets may then
        be committed): :meth:`_confirm` of :meth:`_send`."""
        self._confirm(self._send(outcomes))

    def _send(self, outcomes: list[tuple[Any, list[Outgoing] | _Letter]]) -> _Sending:
        """Hand every record's outcome to the producer, without waiting (dead letters wait for :meth:`_confirm`)."""
        produced = [
            (record, self._send_each(outcome, self._trace_headers(record)))
            for record, outcome in outcomes
            if isinstance(outcome, list)
        ]
        return _Sending(produced, [outcome for _, outcome in outcomes if isinstance(outcome, _Letter)])

    def _confirm(self, sending: _Sending) -> None:
        """Return once the broker has acknowledged the outcomes handed to it by :meth:`_send`, and the dead letters
        are produced.

        A record whose own records the producer or the broker refuses (too large, invalid) is dead-lettered
        in their place; dead letters are produced by :meth:`_deliver_dead_letters`, which never raises.
        Any other failure of the handler's records (the broker unreachable past the producer's retries)
        raises before anything is committed, so that they are produced again after a restart, not lost.
        """
        letters = list(sending.letters)
        for record, flights in sending.produced:
            errors = [error for error in map(self._wait, flights) if error is not None]
            if not errors:
                continue
            unavailable = next((error for error in errors if not isinstance(error, _RECORD_REFUSED)), None)
            if unavailable is not None:
                raise unavailable
            refused = errors[0]
            letters.append(
                self._dead_letter(record, f"its outcome could not be produced: {type(refused).__name__}: {refused}")
            )
        if letters:
            self._deliver_dead_letters(letters)

    def _deliver_dead_letters(self, letters: list[_Letter]) -> None:
        """Produce dead letters, each attempted up to ``dead_letter_attempts`` times (one the broker refuses
        as too large is sent again without its payload); one that still fails is logged and counted in
        ``member_export_consumer_dead_letter_failures_total``, and its record's offset moves on all the same."""
        pending: list[tuple[_Letter, Exception]] = []
        for attempt in range(self.dead_letter_attempts):
            if attempt:
                time.sleep(self.dead_letter_backoff_seconds * 2 ** (attempt - 1))
            flights = [(letter, self._send_each([self._letter_record(letter)], letter.trace)[0]) for letter in letters]
            pending = [(letter, error) for letter, flight in flights if (error := self._wait(flight)) is not None]
            if not pending:
                return
            for letter, error in pending:
                log.warning(
                    "dead letter not produced",
                    service=self.service,
                    topic=letter.record.topic,
                    offset=letter.record.offset,
                    attempt=attempt + 1,
                    error=f"{type(error).__name__}: {error}",
                )
                if isinstance(error, _RECORD_REFUSED):
                    letter.payload_bytes = 0
            letters = [letter for letter, _ in pending]
        for letter, error in pending:
            DEAD_LETTER_FAILURES.labels(service=self.service).inc()
            value = letter.record.value
            log.error(
                "dead letter given up: the record is skipped",
                service=self.service,
                topic=letter.record.topic,
                partition=letter.record.partition,
                offset=letter.record.offset,
                reason=letter.reason,
                payload_size=None if value is None else len(value),
                payload_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
                attempts=self.dead_letter_attempts,
                error=f"{type(error).__name__}: {error}",
            )

    def _letter_record(self, letter: _Letter) -> Outgoing:
        return dead_letter_record(
            letter.record,
            letter.reason,
            service=self.service,
            dead_letter_topic=self.dead_letter_topic,
            payload_bytes=letter.payload_bytes,
        )

    def _send_each(self, outgoing: list[Outgoing], trace_headers: ProducedHeaders = ()) -> list[Any]:
        """Hand each record to the producer (with ``trace_headers`` unless it carries a trace of its own): its
        future, or what ``send()`` raised at once (a record over the producer's ``max_request_size``, a key it
        cannot encode, no metadata in time)."""
        flights: list[Any] = []
        for record in outgoing:
            try:
                flights.append(send_record(self.producer, record, trace_headers))
            except Exception as exc:  # noqa: BLE001 - judged by the caller, per record
                flights.append(exc)
        return flights

    def _wait(self, flight: Any) -> Exception | None:
        """None once the broker has acknowledged the record, else why it was not."""
        if isinstance(flight, Exception):
            return flight
        try:
            flight.get(timeout=produce_timeout_seconds(self.producer))
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            return exc
        return None

    def send_all(self, outgoing: list[Outgoing]) -> None:
        """Produce records and return once the broker has acknowledged every one."""
        produce_and_wait(self.producer, outgoing)

    def send(self, outgoing: list[Outgoing]) -> InFlight:
        """Hand records to the producer and return at once; ``.wait()`` for their acknowledgements."""
        return produce(self.producer, outgoing)

    def _hand_back(self, first_offsets: dict[TopicPartition, int]) -> None:
        """Seek each partition still owned back to the first of its records not settled, so that the next poll
        returns them again (a partition that moved on is read by its new owner from the committed offset).

        Never forward: a partition whose next fetch is at or before that record already reads it again (a
        rebalance sought it back to a held record, or it is read from the committed offset): seeking it to the
        record would skip those before it, whose holds the rebalance forgot, and a later commit would pass them.

        The records held from there on are read again too, so they are held no longer (one due before the partition
        is fetched again would be settled alone, and its commit would pass the records handed back before it), and
        what was settled past the record is forgotten (a commit once nothing is held would jump past it)."""
        if not first_offsets:
            return
        try:
            owned = self.consumer.assignment()
        except Exception:  # noqa: BLE001 - the consumer is closing: nothing to hand back to
            return
        for partition, offset in first_offsets.items():
            if partition in self._commit_later:  # read again from there: a commit owed goes no further
                self._commit_later[partition] = min(self._commit_later[partition], offset)
            if partition in owned:
                self.held.read_again_from(partition, offset)
                if self._reads_again_from_before(partition, offset):
                    continue
                try:
                    self.consumer.seek(partition, offset)
                except Exception as exc:  # noqa: BLE001 - revoked meanwhile: its new owner reads it
                    log.info(
                        "partition not handed back", service=self.service, partition=str(partition), error=str(exc)
                    )

    def _reads_again_from_before(self, partition: TopicPartition, offset: int) -> bool:
        """True when the consumer's next fetch of ``partition`` is at or before ``offset``, or from the committed
        offset (no position: never past a record not settled). False when the position cannot be told."""
        try:
            position = fetch_position(self.consumer, partition)
        except Exception:  # noqa: BLE001 - the private API changed or the partition moved: seek as before
            return False
        return position is None or position <= offset

    def _commit(self, next_offsets: dict[TopicPartition, int], *, wait: bool = True) -> None:
        """Commit every partition's next offset in one request (a round trip per partition adds up); with ``wait``
        false, send the commit and go on (its answer is told to :meth:`_commit_answered` at a later poll; the
        offsets are committed again, waiting, before the consumer closes: :meth:`_confirm_commits`).

        A commit that fails is not an error of the records: they were handled and their outcomes produced;
        the group moved on (this member was dropped while the broker was away, a rebalance) or the
        coordinator is away. Their partitions' next owner reads them again from the last committed offset,
        and the consumer rejoins at its next poll. Only a fatal configuration error raises.
        """
        next_offsets = self._no_further_than_read(next_offsets)
        if not next_offsets:
            return
        offsets = {p: OffsetAndMetadata(o, None, -1) for p, o in next_offsets.items()}
        try:
            if wait:
                self.consumer.commit(offsets)
            else:
                self.consumer.commit_async(offsets, callback=self._commit_answered)
                self._committed_async.update(next_offsets)
        except Exception as exc:
            if is_fatal(exc) or not isinstance(exc, KafkaError):
                raise
            self._commit_refused(exc, len(next_offsets))
            if self._listening:  # owed: sent again at a later turn while its partition is still this consumer's
                for partition, offset in next_offsets.items():
                    self._commit_later[partition] = max(offset, self._commit_later.get(partition, offset))
            return
        if wait:
            self._commit_accepted()
        for partition, offset in next_offsets.items():
            # Covered by this commit: an offset owed, or one a refusal called back as this commit was sent made owed
            # (kafka-python runs the callbacks of earlier commits first).
            if self._commit_later.get(partition, offset) <= offset:
                self._commit_later.pop(partition, None)
            if wait and self._committed_async.get(partition, offset) <= offset:
                # Made: a refusal of an earlier commit sent without waiting, answered later, owes nothing.
                self._committed_async.pop(partition, None)

    def _no_further_than_read(self, next_offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Each partition's offset, no further than the consumer's next fetch of it: the records from there on are
        read again (a rebalance or a hand-back sought the partition back), and a record settled meanwhile (a held one
        come due) must not carry the commit past them before they are settled.

        A partition with no position (an offset reset in flight) or whose position cannot be told (an exception
        reading it) is not committed now but at a later turn, once its position is known, no further than it
        (:meth:`_commit_deferred`): dropped, its records settled would stay uncommitted on an idle partition (its lag
        above 0, handled again after a restart); committed as asked, it could pass records read again."""
        capped: dict[TopicPartition, int] = {}
        for partition, offset in next_offsets.items():
            try:
                position = fetch_position(self.consumer, partition)
            except Exception as exc:  # noqa: BLE001 - the private API changed or the partition moved: deferred
                self._position_unreadable(partition, exc)
                position = None
            if position is None:
                self._commit_later[partition] = max(offset, self._commit_later.get(partition, offset))
                continue
            capped[partition] = min(offset, position)
            if self._commit_later.get(partition, capped[partition]) <= capped[partition]:
                self._commit_later.pop(partition, None)  # covered by this commit
        return capped

    def _commit_deferred(self, polled: dict[TopicPartition, list[Any]], *, force: bool = False) -> None:
        """Commit the offsets owed (see ``_commit_later``), now that the poll may have made the partitions' positions
        known, no further than a record ``polled`` (not handled yet), held, or in hand of a round in flight (the
        partition may have been sought back and read again since the offset was settled), nor than the next fetch
        (:meth:`_no_further_than_read`), nor below what this consumer last sent. An offset stays owed until a commit
        reaches it; one of a partition no longer assigned is its next owner's (or, given back, owed by the rebalance:
        :meth:`_assigned`).

        After a refusal, not before its backoff is over (see :data:`OWED_COMMIT_MAX_BACKOFF_SECONDS`), unless
        ``force`` (the close)."""
        if not self._commit_later:
            return
        try:
            assigned = self.consumer.assignment()
        except Exception:  # noqa: BLE001 - closing: nothing to commit
            return
        # Owed no more: a partition no longer assigned, or a later commit sent (its refusal would make it owed).
        self._commit_later = {
            p: o for p, o in self._commit_later.items() if p in assigned and o >= self._committed_async.get(p, -1)
        }
        owed = dict(self._commit_later)
        for records in (*(pending.records for pending in self._window or ()), *polled.values()):
            for record in records:
                partition, offset = record_key(record)
                if offset < owed.get(partition, -1):
                    owed[partition] = offset
        for partition, offset in list(owed.items()):
            first_held = self.held.first_held(partition)
            if first_held is not None and first_held < offset:
                owed[partition] = first_held
        owed = {partition: o for partition, o in owed.items() if o >= self._committed_async.get(partition, -1)}
        if not force and time.monotonic() < self._owed_due:
            return  # the coordinator refused the last commit: sent again once the backoff is over
        # Without waiting, one round at a time too: a coordinator still away must not hold the loop in a commit at
        # every turn. A refusal makes it owed again (:meth:`_commit_answered`); the close confirms it.
        self._commit(owed, wait=False)

    def _position_unreadable(self, partition: TopicPartition, error: BaseException) -> None:
        """Log, once a loop, that a commit waits for a position that cannot be told (then at debug level)."""
        level = log.debug if self._position_unreadable_logged else log.warning
        self._position_unreadable_logged = True
        level(
            "commit deferred: the partition's position cannot be told",
            service=self.service,
            partition=str(partition),
            error=f"{type(error).__name__}: {error}",
        )

    def _commit_answered(self, offsets: dict[TopicPartition, Any], answer: Any) -> None:
        """A commit sent without waiting was answered (kafka-python calls this at a later poll or commit): a refusal is
        counted and logged as :meth:`_commit` does, and its offsets are owed, committed at a later turn
        (:meth:`_commit_deferred`), for each partition whose last commit sent is this one (a later one covers it; one
        revoked since is its next owner's, or committed as the rebalance ends). Else a partition that goes idle (no
        later round commits it) keeps its records uncommitted until the consumer closes: its lag above 0, and they are
        handled again after a crash. A commit refused again (the coordinator still away) is owed again."""
        if not isinstance(answer, Exception):
            self._commit_accepted()
            return
        self._commit_refused(answer, len(offsets))
        if is_fatal(answer):  # no later turn cures it (an authorization refused): counted and logged once, not owed
            return
        for partition, meta in offsets.items():
            if self._committed_async.get(partition) == meta.offset:
                self._commit_later[partition] = max(meta.offset, self._commit_later.get(partition, meta.offset))

    def _confirm_commits(self) -> None:
        """Commit again, waiting, the offsets committed without waiting (the consumer closes after this: a commit
        still in flight would be lost with it), and what is owed whose position is known now (:meth:`_commit_deferred`).
        Never raises an ``Exception``: the records are redelivered."""
        try:
            self._commit_deferred({}, force=True)
        except Exception as exc:  # noqa: BLE001 - closing: what is not committed is read again
            log.warning("last commit not made", service=self.service, error=f"{type(exc).__name__}: {exc}")
        offsets, self._committed_async = self._committed_async, {}
        try:
            self._commit(offsets)
        except Exception as exc:  # noqa: BLE001 - closing: what is not committed is read again
            log.warning("last commit not made", service=self.service, error=f"{type(exc).__name__}: {exc}")

    def _commit_refused(self, exc: BaseException, partitions: int) -> None:
        """Count a commit sent and refused, and back off the re-sending of what is owed (see
        :data:`OWED_COMMIT_MAX_BACKOFF_SECONDS`). Logged as a warning when it is the first refused since one was
        accepted (or no wait cures it), else at debug level: an outage of minutes logs one warning, not one a poll."""
        COMMITS_REFUSED.labels(service=self.service, cause=type(exc).__name__).inc()
        self._refused_in_a_row += 1
        fatal = is_fatal(exc)
        if not fatal:
            first = max(self.poll_timeout_ms, IN_FLIGHT_POLL_MS) / 1000
            self._owed_backoff = min(OWED_COMMIT_MAX_BACKOFF_SECONDS, self._owed_backoff * 2 or first)
            self._owed_due = time.monotonic() + self._owed_backoff
        level = log.warning if fatal or self._refused_in_a_row == 1 else log.debug
        level(
            "commit refused: these records will be redelivered",
            service=self.service,
            partitions=partitions,
            error=f"{type(exc).__name__}: {exc}",
            refused_in_a_row=self._refused_in_a_row,
        )

    def _commit_accepted(self) -> None:
        """A commit was accepted: the refusals in a row end (logged with their count), and so does the backoff."""
        if self._refused_in_a_row:
            log.info("commits accepted again", service=self.service, refused_in_a_row=self._refused_in_a_row)
        self._refused_in_a_row = 0
        self._owed_backoff = self._owed_due = 0.0
