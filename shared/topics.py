"""Topic names, in one place. ``EXPORT_TOPIC_PREFIX`` prefixes all of them (tests isolate with it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

RUN_REQUESTS = "exports.run-requests"
MEMBER_BATCHES = "exports.member-batches"
RUN_EVENTS = "exports.run-events"
DEAD_LETTERS = "exports.dead-letters"


#: Topic-level configs the services set when they create a topic (none today: the broker's defaults apply).
#: Ops who own the topics give theirs the same (the chart's KafkaTopic resources are tested against them).
TOPIC_CONFIGS: Mapping[str, str] = {}


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the services would create it: what ops create instead when they own the topics."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """The topic names with a deployment's prefix applied."""

    prefix: str = ""

    @property
    def run_requests(self) -> str:
        return self.prefix + RUN_REQUESTS

    @property
    def member_batches(self) -> str:
        return self.prefix + MEMBER_BATCHES

    def member_batches_for(self, priority: str) -> str:
        """Where batches of a definition of ``priority`` go: high and low have topics of their own."""
        return self.member_batches if priority == "normal" else f"{self.member_batches}.{priority}"

    def member_batch_topics(self) -> list[str]:
        """The member-batch topics, most urgent first (the dispatcher drains them in this order)."""
        return [self.member_batches_for(p) for p in ("high", "normal", "low")]

    @property
    def run_events(self) -> str:
        return self.prefix + RUN_EVENTS

    @property
    def dead_letters(self) -> str:
        return self.prefix + DEAD_LETTERS

    def all(self) -> list[str]:
        return [self.run_requests, *self.member_batch_topics(), self.run_events, self.dead_letters]

    def specs(self, partitions: int, replication_factor: int) -> list[TopicSpec]:
        """Every topic with the partitions, replication factor and configs it is created with."""
        return [TopicSpec(name, partitions, replication_factor, dict(TOPIC_CONFIGS)) for name in self.all()]
