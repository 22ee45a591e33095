"""The AsyncAPI 3.0 document of the topics, generated from the event models (``make docs``).

``docs/asyncapi.yaml`` is this module's output; a unit test fails when the committed file is stale.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any, get_args

import yaml
from pydantic.json_schema import models_json_schema

from shared import events, topics
from shared.events import (
    RUN_REQUESTED_CLOUDEVENT_TYPE,
    SCHEMA_VERSION,
    AnyRunEventsRecord,
    DeadLetter,
    Event,
    MemberBatch,
    RangeRequested,
    RunRequested,
)

_TOPICS = topics.Topics()
_RUN_EVENT_MODELS: list[type[Event]] = list(get_args(AnyRunEventsRecord))
_BATCHES = "Batches of members to deliver"
#: channel id → (topic, key, description, message models)
CHANNELS: dict[str, tuple[str, str, str, list[type[Event]]]] = {
    "runRequests": (
        topics.RUN_REQUESTS,
        "run id (a range request: <run id>:<range>:<n>)",
        "Requests to start an export run, and the key ranges of a run split across extractor replicas. A run "
        f"request may also be a CloudEvent of type {RUN_REQUESTED_CLOUDEVENT_TYPE}, in structured or binary "
        "content mode (binary: its attributes in ce_* headers).",
        [RunRequested, RangeRequested],
    ),
    "memberBatchesHigh": (
        _TOPICS.member_batches_for("high"),
        "<run id>:<batch index>",
        f"{_BATCHES} of definitions of priority high (drained first).",
        [MemberBatch],
    ),
    "memberBatches": (
        _TOPICS.member_batches_for("normal"),
        "<run id>:<batch index>",
        f"{_BATCHES} of definitions of priority normal.",
        [MemberBatch],
    ),
    "memberBatchesLow": (
        _TOPICS.member_batches_for("low"),
        "<run id>:<batch index>",
        f"{_BATCHES} of definitions of priority low (drained last).",
        [MemberBatch],
    ),
    "runEvents": (
        topics.RUN_EVENTS,
        "run id (a circuit breaker's change: the profile's name)",
        "What happens to a run, in order per run and producer (the extractor's events among themselves, the "
        "dispatcher's among themselves; not across services); and the connection profiles' circuit breakers opening "
        "and closing.",
        _RUN_EVENT_MODELS,
    ),
    "deadLetters": (topics.DEAD_LETTERS, "run id or source key", "What could not be processed, and why.", [DeadLetter]),
}

_TRACE_HEADERS: dict[str, Any] = {
    "traceparent": {
        "type": "string",
        "description": "W3C trace context of the work that produced the record (when it ran in a trace).",
    },
    "tracestate": {"type": "string", "description": "W3C trace state, with traceparent when it has one."},
}
#: The headers of a run request sent as a binary-mode CloudEvent (Kafka protocol binding of CloudEvents 1.0).
_CLOUDEVENT_HEADERS: dict[str, Any] = {
    "ce_specversion": {"type": "string", "const": "1.0", "description": "Binary-mode CloudEvent: its spec version."},
    "ce_type": {"type": "string", "const": RUN_REQUESTED_CLOUDEVENT_TYPE},
    "ce_source": {"type": "string", "description": "The sender (a URI reference); requested_by by default."},
    "ce_id": {"type": "string", "description": "Unique per source; with ce_source, names the run without run_id."},
    "ce_time": {"type": "string", "format": "date-time", "description": "The request's requested_at."},
    "ce_traceparent": {"type": "string", "description": "Distributed-tracing extension (the run's trace)."},
    "content-type": {
        "type": "string",
        "description": "application/json in binary mode; application/cloudevents+json in structured mode.",
    },
}
_ROLE = re.compile(r":(\w+):`~?([\w.]+)`")


def _resolved(text: str) -> str:
    """``text`` with its Sphinx roles resolved: ``:data:`NAME``` to the value of ``shared.events.NAME`` (a
    constant a reader needs, the CloudEvents type), any other role to its last name."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2).rsplit(".", 1)[-1]
        value = getattr(events, target, None) if match.group(1) == "data" else None
        return f"``{value}``" if isinstance(value, str | int) else f"``{target}``"

    return _ROLE.sub(role, text)


def _paragraphs(model: type[Event]) -> list[str]:
    text = inspect.cleandoc(model.__doc__ or "")
    return [" ".join(block.split()) for block in text.split("\n\n") if block.strip()]


def summary(model: type[Event]) -> str:
    """The first sentence of ``model``'s docstring (its first paragraph, on one line, up to its first full stop)."""
    first = _resolved(_paragraphs(model)[0])
    end = re.search(r"[.!?](\s|$)", first)
    return first if end is None else first[: end.start() + 1]


def _message(model: type[Event], key: str) -> dict[str, Any]:
    name = model.__name__
    headers = dict(_TRACE_HEADERS)
    if model is RunRequested:
        headers |= _CLOUDEVENT_HEADERS
    return {
        "name": name,
        "title": model.model_fields["type"].default,
        "summary": summary(model),
        "description": "\n\n".join(_resolved(paragraph) for paragraph in _paragraphs(model)),
        "contentType": "application/json",
        "headers": {"type": "object", "properties": headers},
        "payload": {"$ref": f"#/components/schemas/{name}"},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}},
    }


def document() -> dict[str, Any]:
    """The AsyncAPI document as a mapping."""
    models = list(dict.fromkeys(model for _, _, _, group in CHANNELS.values() for model in group))
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
            messages.setdefault(name, _message(model, key))
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
