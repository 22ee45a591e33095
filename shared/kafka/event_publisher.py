"""Events published on their topics (the application layer's publisher port) and dead letters read back.

Each publication is a producer span, under the caller's trace or else a new one (a run requested through the
admin API or exportctl starts its run's trace here), carried by its records' ``traceparent`` header.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kafka import KafkaProducer

from shared.events import AnyRunEvent, DeadLetter, Priority, RunRequested
from shared.kafka.clients import produce_and_wait, read_whole_topic
from shared.kafka.records import Outgoing
from shared.settings import CommonSettings
from shared.topics import Topics
from shared.tracing import publishing


class KafkaEventPublisher:
    """Publishes through ``send`` (produce and wait for the broker's acks), on the topics of ``topics``."""

    def __init__(self, send: Callable[[list[Outgoing]], None], topics: Topics) -> None:
        self.send, self.topics = send, topics

    @classmethod
    def over(cls, producer: KafkaProducer, topics: Topics) -> KafkaEventPublisher:
        """A publisher over a producer that waits for acknowledgement of each call's records."""
        return cls(lambda outgoing: produce_and_wait(producer, outgoing), topics)

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
            self.send([Outgoing(topic, str(request.run_id), request.to_bytes(), headers)])

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        topic = self.topics.run_events
        with publishing(f"send {topic}", {"messaging.system": "kafka", "messaging.destination.name": topic}) as headers:
            # Keyed by run id: a run's events stay in order on one partition.
            self.send([Outgoing(topic, str(event.run_id), event.to_bytes(), headers) for event in events])

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        topic = self.topics.member_batches_for(priority.value)
        with publishing(f"send {topic}", {"messaging.system": "kafka", "messaging.destination.name": topic}) as headers:
            self.send([Outgoing(topic, key, value, headers) for key, value in batches])


class KafkaDeadLetters:
    """The dead-letter topic read from its start (exportctl's listing and replays)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings

    def dead_letters(self) -> list[DeadLetter]:
        letters = []
        for value in read_whole_topic(self.settings, self.settings.topics.dead_letters):
            try:
                letters.append(DeadLetter.model_validate_json(value))
            except ValueError:
                continue  # not ours to list (another schema version, or garbage)
        return letters
