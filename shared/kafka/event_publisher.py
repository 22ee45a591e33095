"""Events published on their topics (the application layer's publisher port) and dead letters read back.

Each publication is a producer span, under the caller's trace or else a new one (a run requested through the
admin API or exportctl starts its run's trace here), carried by its records' ``traceparent`` header.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from shared.application.errors import DeadLettersUnreadable, PublishFailed
from shared.application.ports import ReadDeadLetters
from shared.events import AnyRunEvent, DeadLetter, Priority, RunRequested
from shared.kafka.clients import (
    READ_CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    InFlight,
    TopicMissing,
    produce,
    read_topic_unless,
    read_whole_topic,
)
from shared.kafka.records import Outgoing
from shared.settings import CommonSettings
from shared.topics import Topics
from shared.tracing import publishing


class KafkaEventPublisher:
    """Publishes through ``send`` (produce and wait for the broker's acks), on the topics of ``topics``; a Kafka
    client's error is :class:`~shared.application.errors.PublishFailed` naming what was published and where."""

    def __init__(self, send: Callable[[list[Outgoing]], None], topics: Topics) -> None:
        self._send, self.topics = send, topics

    @classmethod
    def over(cls, producer: KafkaProducer, topics: Topics, wait_seconds: float | None = None) -> KafkaEventPublisher:
        """A publisher over a producer that waits for acknowledgement of each call's records: ``wait_seconds`` at
        most from the call, handing them to the producer included (the records may still be delivered after it:
        their outcome is unknown), else the delivery timeout and a margin. The producer's ``send()`` may block for
        a topic's metadata before the wait starts: its ``max_block_ms`` must be below ``wait_seconds`` to keep
        the bound (:func:`~shared.kafka.clients.make_producer`'s ``max_block_seconds``)."""
        if wait_seconds is None:
            return cls(lambda outgoing: _handed(producer, outgoing).wait(), topics)
        bound = wait_seconds

        def send(outgoing: list[Outgoing]) -> None:
            deadline = time.monotonic() + bound
            in_flight = _handed(producer, outgoing)
            in_flight.wait(max(0.0, deadline - time.monotonic()))

        return cls(send, topics)

    def send(self, outgoing: list[Outgoing], what: str) -> None:
        """Produce ``outgoing`` (``what`` they are) and wait for their acknowledgement."""
        where = ", ".join(dict.fromkeys(o.topic for o in outgoing))
        try:
            self._send(outgoing)
        except _NotHanded as exc:
            raise PublishFailed(f"{what} on {where}", _described(exc.cause), unknown=False) from exc.cause
        except KafkaError as exc:
            raise PublishFailed(f"{what} on {where}", _described(exc)) from exc

    def publish_run_request(self, request: RunRequested) -> None:
        topic = self.topics.run_requests
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "member_export.run_id": str(request.run_id),
            "member_export.definition": request.definition,
            "member_export.trigger": request.trigger.value,
        }
        with publishing(f"send {topic}", attributes) as headers:
            self.send([Outgoing(topic, str(request.run_id), request.to_bytes(), headers)], "the run request")

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        topic = self.topics.run_events
        with publishing(f"send {topic}", {"messaging.system": "kafka", "messaging.destination.name": topic}) as headers:
            # Keyed by run id: a run's events stay in order on one partition.
            outgoing = [Outgoing(topic, str(event.run_id), event.to_bytes(), headers) for event in events]
            self.send(outgoing, ", ".join(dict.fromkeys(event.type for event in events)) or "run events")

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        topic = self.topics.member_batches_for(priority.value)
        with publishing(f"send {topic}", {"messaging.system": "kafka", "messaging.destination.name": topic}) as headers:
            self.send([Outgoing(topic, key, value, headers) for key, value in batches], "member batches")


class _NotHanded(Exception):
    """The producer refused the only record before taking it (no metadata for its topic within ``max_block_ms``, no
    room in its buffer): nothing reached a broker, so the publication's outcome is known: not published."""

    def __init__(self, cause: KafkaError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _handed(producer: KafkaProducer, outgoing: list[Outgoing]) -> InFlight:
    """``produce``, telling a refusal of a single record by ``send()`` itself apart (:class:`_NotHanded`); with
    several records, those before the refused one were handed over: their outcome stays unknown."""
    try:
        return produce(producer, outgoing)
    except KafkaError as exc:
        if len(outgoing) == 1:
            raise _NotHanded(exc) from exc
        raise


def _described(exc: Exception) -> str:
    """``Class: message`` (its first line), the class named once: kafka-python's errors start their message with it."""
    name, message = type(exc).__name__, _first_line(exc)
    return message if message == name or message.startswith(f"{name}:") else f"{name}: {message}"


def _first_line(exc: Exception) -> str:
    """The client's message, its first line, at most 300 characters (kafka-python's name the topic and partition)."""
    return (str(exc).splitlines() or [""])[0][:300]


class KafkaDeadLetters:
    """The dead-letter topic read from its start (exportctl's listing and replays, the console's and the API's), its
    connection bounded by ``connect_timeout`` (:func:`read_whole_topic`).

    A topic that does not exist is :class:`DeadLettersUnreadable` naming it and the settings that name it
    (:class:`~shared.kafka.clients.TopicMissing`), for every reader alike: a wrong ``EXPORT_TOPIC_PREFIX`` or
    cluster is not "no dead letters" (before session 55, the admin API and the console answered it as none)."""

    def __init__(self, settings: CommonSettings, connect_timeout: float = READ_CONNECT_TIMEOUT_SECONDS) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout

    def dead_letters(self) -> ReadDeadLetters:
        """Every dead letter; :class:`DeadLettersUnreadable` when Kafka does not give them (its error, first line)."""
        try:
            values = read_whole_topic(
                self.settings,
                self.settings.topics.dead_letters,
                connect_timeout=self.connect_timeout,
                must_exist=True,
            )
        except TopicMissing as exc:
            raise DeadLettersUnreadable(str(exc)) from None
        except (KafkaError, TimeoutError, OSError) as exc:
            raise DeadLettersUnreadable(_described(exc)) from None
        return _decoded(values)

    def dead_letters_unless(
        self, known: Callable[[Hashable], bool], *, spent: float = 0.0
    ) -> tuple[Hashable | None, ReadDeadLetters | None]:
        """The topic's version (:data:`~shared.kafka.clients.TopicVersion`; None when the broker names no topic id)
        and, unless ``known`` says the caller holds what it holds then, every dead letter up to it (None when
        ``known``), in one bounded read (:func:`read_topic_unless`) of what ``spent`` (seconds an earlier read for
        the same answer took) leaves of its :data:`~shared.kafka.clients.READ_TIMEOUT_SECONDS`;
        :class:`DeadLettersUnreadable` as :meth:`dead_letters`, at once when nothing is left; a timeout names the
        call's whole bound, not what was left of it."""
        topic = self.settings.topics.dead_letters
        try:
            left = READ_TIMEOUT_SECONDS - spent
            if left <= 0:
                raise TimeoutError(f"could not read {topic} to its end within {READ_TIMEOUT_SECONDS:.0f} s")
            # read_topic_unless ends within its timeout only given a connect_timeout of at most half of it (the
            # bootstrap and the metadata request, which take no deadline, each wait up to connect_timeout): with 10 s
            # and 5 s left, the read again took 10 s. Left under 2 s, kafka-python's 1 s floor of a request's
            # timeout (the metadata's) may still pass the call's bound, by under 1 s.
            version, values = read_topic_unless(
                self.settings,
                topic,
                known,
                timeout=left,
                connect_timeout=min(self.connect_timeout, left / 2),
                named_timeout=READ_TIMEOUT_SECONDS,
                must_exist=True,
            )
        except TopicMissing as exc:
            raise DeadLettersUnreadable(str(exc)) from None
        except (KafkaError, TimeoutError, OSError) as exc:
            raise DeadLettersUnreadable(_described(exc)) from None
        return version, None if values is None else _decoded(values)


def _decoded(values: list[bytes]) -> ReadDeadLetters:
    """The dead letters of the topic's record values, and how many could not be read as one (another schema
    version, or garbage): counted by the run their JSON names, when it names one, never dropped unsaid."""
    letters, unreadable = [], Counter[uuid.UUID | None]()
    for value in values:
        try:
            letters.append(DeadLetter.model_validate_json(value))
        except ValueError:
            unreadable[_named_run(value)] += 1
    return ReadDeadLetters(letters, unreadable)


def _named_run(value: bytes) -> uuid.UUID | None:
    """The run a record that is no dead letter of ours names (its JSON object's ``run_id``), if any."""
    try:
        found = json.loads(value)
        return uuid.UUID(found["run_id"]) if isinstance(found, dict) and isinstance(found.get("run_id"), str) else None
    except ValueError:  # not JSON, not UTF-8, not a UUID (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None
