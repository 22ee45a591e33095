"""Events published on their topics (the application layer's publisher port) and dead letters read back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kafka import KafkaProducer

from shared.events import AnyRunEvent, DeadLetter, Priority, RunRequested
from shared.kafka.clients import produce_and_wait, read_whole_topic
from shared.kafka.records import Outgoing
from shared.settings import CommonSettings
from shared.topics import Topics


class KafkaEventPublisher:
    """Publishes through ``send`` (produce and wait for the broker's acks), on the topics of ``topics``."""

    def __init__(self, send: Callable[[list[Outgoing]], None], topics: Topics) -> None:
        self.send, self.topics = send, topics

    @classmethod
    def over(cls, producer: KafkaProducer, topics: Topics) -> KafkaEventPublisher:
        """A publisher over a producer that waits for acknowledgement of each call's records."""
        return cls(lambda outgoing: produce_and_wait(producer, outgoing), topics)

    def publish_run_request(self, request: RunRequested) -> None:
        self.send([Outgoing(self.topics.run_requests, str(request.run_id), request.to_bytes())])

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        # Keyed by run id: a run's events stay in order on one partition.
        self.send([Outgoing(self.topics.run_events, str(event.run_id), event.to_bytes()) for event in events])

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        topic = self.topics.member_batches_for(priority.value)
        self.send([Outgoing(topic, key, value) for key, value in batches])


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
