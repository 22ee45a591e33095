"""The AsyncAPI 3.0 document of the topics, generated from the event models (``make docs``).

``docs/asyncapi.yaml`` is this module's output; a unit test fails when the committed file is stale.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from shared import topics
from shared.events import (
    SCHEMA_VERSION,
    BatchOutcome,
    CircuitBreakerChanged,
    DeadLetter,
    Event,
    ExtractionCompleted,
    MemberBatch,
    RangeRequested,
    RunCancelled,
    RunFailed,
    RunMissed,
    RunRequested,
    RunSkipped,
    RunStarted,
)

#: channel id → (topic, key, description, message models)
CHANNELS: dict[str, tuple[str, str, str, list[type[Event]]]] = {
    "runRequests": (
        topics.RUN_REQUESTS,
        "run id (a range request: <run id>:<range>:<n>)",
        "Requests to start an export run, and the key ranges of a run split across extractor replicas.",
        [RunRequested, RangeRequested],
    ),
    "memberBatches": (topics.MEMBER_BATCHES, "<run id>:<batch index>", "Batches of members to deliver.", [MemberBatch]),
    "runEvents": (
        topics.RUN_EVENTS,
        "run id (a circuit breaker's change: the profile's name)",
        "What happens to a run, in order per run; and the connection profiles' circuit breakers opening and closing.",
        [
            RunStarted,
            ExtractionCompleted,
            BatchOutcome,
            RunFailed,
            RunSkipped,
            RunMissed,
            RunCancelled,
            CircuitBreakerChanged,
        ],
    ),
    "deadLetters": (topics.DEAD_LETTERS, "run id or source key", "What could not be processed, and why.", [DeadLetter]),
}


def document() -> dict[str, Any]:
    """The AsyncAPI document as a mapping."""
    models = [model for _, _, _, group in CHANNELS.values() for model in group]
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for channel_id, (address, key, description, group) in CHANNELS.items():
        channel_messages = {}
        for model in group:
            name = model.__name__
            messages[name] = {
                "name": name,
                "title": model.model_fields["type"].default,
                "summary": (model.__doc__ or "").strip().splitlines()[0],
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        channels[channel_id] = {
            "address": address,
            "description": f"{description} Key: {key}. Topic names take the EXPORT_TOPIC_PREFIX.",
            "messages": channel_messages,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "member-export events",
            "version": str(SCHEMA_VERSION),
            "description": "The Kafka topics of the member-export pipeline. Generated from shared/events.py.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
