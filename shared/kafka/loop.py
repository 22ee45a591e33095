"""The at-least-once consumer loop every service runs: decode → handle → produce → commit.

A handler receives one decoded record and returns the records to produce (or, with ``handle_round``, a
poll's decoded records at once, to handle them concurrently). The loop commits a record's
offset only after everything the handler produced for it has been acknowledged by the broker, so a
crash at any point redelivers rather than loses. A record that cannot be decoded, or whose handler
raises, is sent to the dead-letter topic with the reason, and the loop goes on: one bad record never
stops a consumer.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from shared.errors import InvalidInput, RetryableError
from shared.events import DeadLetter
from shared.kafka.clients import InFlight, produce, produce_and_wait
from shared.kafka.records import Headers as Headers
from shared.kafka.records import Outgoing as Outgoing
from shared.metrics import RECORDS_CONSUMED, RECORDS_DEAD_LETTERED

E = TypeVar("E")
log = structlog.get_logger(__name__)

#: A poll's events handled at once: per event, the records to produce or the exception it raised.
RoundHandler = Callable[[list[E]], Sequence["list[Outgoing] | BaseException"]]


def value_decoder(parse: Callable[[bytes], E]) -> Callable[[bytes, Headers], E]:
    """A decoder that reads the record's value only (most topics carry plain JSON events)."""
    return lambda value, _headers: parse(value)


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, field-naming summary of a pydantic error (no input values: they may hold secrets)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(p) for p in error["loc"]) or "(record)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


class ConsumerLoop(Generic[E]):
    """Consume ``consumer``'s topics, handling each record at least once: one by one with ``handler``, or a
    poll's records at once with ``handle_round`` (exactly one of the two)."""

    def __init__(
        self,
        *,
        service: str,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        decode: Callable[[bytes, Headers], E],
        dead_letter_topic: str,
        handler: Callable[[E], list[Outgoing]] | None = None,
        retry_attempts: int = 5,
        retry_max_wait: float = 30.0,
        poll_timeout_ms: int = 500,
        periodic: Callable[[], list[Outgoing]] | None = None,
        periodic_seconds: float = 30.0,
        handle_round: RoundHandler[E] | None = None,
        priority_topics: list[str] | None = None,
    ) -> None:
        if (handler is None) == (handle_round is None):
            raise ValueError("give a consumer loop exactly one of handler and handle_round")
        self.service = service
        self.consumer = consumer
        self.producer = producer
        self.decode = decode
        self.handler = handler
        self.dead_letter_topic = dead_letter_topic
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
        self.stopping = threading.Event()
        # Topics most urgent first: while one yields records, the partitions of later ones are paused.
        self.priority_topics = priority_topics or []
        # A poll's records handled together, concurrently (the dispatcher's HTTP calls), instead of one by one.
        self.handle_round = handle_round

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the record in hand, commit, and stop the loop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())

    def run(self) -> None:
        log.info("consumer loop started", service=self.service, topics=sorted(self.consumer.subscription() or []))
        try:
            while not self.stopping.is_set():
                self.poll_once()
                self.run_periodic()
        finally:
            self.consumer.close()
            self.producer.flush()
            self.producer.close()
            log.info("consumer loop stopped", service=self.service)

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
        """Poll, process and commit one batch of records; return how many were processed."""
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        if self.priority_topics:
            self._give_way(polled)
        if self.handle_round is not None:
            return self._process_round(polled, self.handle_round)
        processed = 0
        done: dict[TopicPartition, int] = {}
        for partition, records in polled.items():
            for record in records:
                if self.stopping.is_set():
                    # Hand the rest back: seek so that the next owner (or we, on restart) gets them.
                    self.consumer.seek(partition, record.offset)
                    break
                self.send_all(self._outcome(record))
                done[partition] = record.offset + 1
                processed += 1
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

    def _process_round(self, polled: dict[TopicPartition, list[Any]], handle_round: RoundHandler[E]) -> int:
        """Hand a poll's decoded records to ``handle_round`` at once, produce every result, then commit them all.

        The poll is the unit of backpressure: the next poll waits until this one's records all have
        their outcome, so a slow endpoint slows consumption instead of buffering the topic in memory.
        """
        if self.stopping.is_set():
            for partition, records in polled.items():
                if records:
                    self.consumer.seek(partition, records[0].offset)
            return 0
        records = [record for batch in polled.values() for record in batch]
        outcomes: list[list[Outgoing]] = [[] for _ in records]
        decoded: list[tuple[int, E]] = []
        for index, record in enumerate(records):
            event = self._decode(record)
            if isinstance(event, Outgoing):
                outcomes[index] = [event]
            else:
                decoded.append((index, event))
        results = handle_round([event for _, event in decoded]) if decoded else []
        for (index, _), result in zip(decoded, results, strict=True):
            outcomes[index] = [self._failure(records[index], result)] if isinstance(result, BaseException) else result
        self.send_all([o for outcome in outcomes for o in outcome])
        self._commit({partition: batch[-1].offset + 1 for partition, batch in polled.items() if batch})
        return len(records)

    def _decode(self, record: Any) -> E | Outgoing:
        """The record's event, or its dead letter when it does not decode."""
        RECORDS_CONSUMED.labels(service=self.service, topic=record.topic).inc()
        try:
            return self.decode(record.value, record.headers or [])
        except ValidationError as exc:
            return self._dead_letter(record, f"invalid event: {describe_validation_error(exc)}")
        except (ValueError, UnicodeDecodeError) as exc:
            return self._dead_letter(record, f"invalid event: {exc}")

    def _outcome(self, record: Any) -> list[Outgoing]:
        """What to produce for one record: the handler's records, or a dead letter. Never raises."""
        event = self._decode(record)
        if isinstance(event, Outgoing):
            return [event]
        try:
            assert self.handler is not None  # one-by-one mode
            return self._retrying(self.handler, event)
        except Exception as exc:  # noqa: BLE001 - any failure of one record becomes its dead letter (logged there)
            return [self._failure(record, exc)]

    def _failure(self, record: Any, exc: BaseException) -> Outgoing:
        """The dead letter of a record whose handling raised ``exc``."""
        if isinstance(exc, InvalidInput):
            return self._dead_letter(record, str(exc))
        log.error(
            "handler failed",
            service=self.service,
            topic=record.topic,
            offset=record.offset,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return self._dead_letter(record, f"{type(exc).__name__}: {exc}")

    def send_all(self, outgoing: list[Outgoing]) -> None:
        """Produce records and return once the broker has acknowledged every one."""
        produce_and_wait(self.producer, outgoing)

    def send(self, outgoing: list[Outgoing]) -> InFlight:
        """Hand records to the producer and return at once; ``.wait()`` for their acknowledgements."""
        return produce(self.producer, outgoing)

    def _dead_letter(self, record: Any, reason: str) -> Outgoing:
        """The dead letter of a record that could not be processed (counted and logged here)."""
        RECORDS_DEAD_LETTERED.labels(service=self.service, topic=record.topic).inc()
        log.warning(
            "record dead-lettered", service=self.service, topic=record.topic, offset=record.offset, reason=reason
        )
        letter = DeadLetter(
            reason=reason,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            service=self.service,
            payload=record.value.decode("utf-8", errors="replace") if record.value is not None else None,
        )
        key = record.key.decode("utf-8", errors="replace") if record.key else f"{record.topic}:{record.offset}"
        return Outgoing(self.dead_letter_topic, key, letter.to_bytes())

    def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        """Commit every partition's next offset in one request (a round trip per partition adds up)."""
        if next_offsets:
            self.consumer.commit({p: OffsetAndMetadata(o, None, -1) for p, o in next_offsets.items()})
