"""Decode run requests: our JSON event, or a CloudEvent in Kafka's structured or binary content mode.

CloudEvents contract (``type`` = ``io.member-export.run.requested.v1``, JSON data)::

    data: {"definition": "<name>", "parameters": {...}?, "run_id": "<uuid>"?, "requested_by": "..."?,
           "scheduled_for": "<instant>"?, "allow_mass_removal": true?, "definition_id": "<uuid>"?}

``data`` takes the fields a plain run request takes (not ``trigger`` nor ``requested_at``: see below), and fields
it does not know are ignored, as in every event of the contract.

Without ``data.run_id`` the run id is derived from the event's ``source`` and ``id`` (which CloudEvents
makes unique per event), so a republished event starts its run once. A plain run request without ``run_id`` has
the run id of its record (:func:`record_run_id`): redelivered or handed back to be handled again, it is the same
run, started once (a request published twice is two records: two runs). ``requested_by`` defaults to the
``source`` (its first 200 characters: :data:`shared.events.REQUESTED_BY_MAX`); a ``definition`` that is no
definition name or a ``requested_by`` longer than 200 characters is refused (dead-lettered, naming the field); the
trigger is ``event`` and ``requested_at`` the event's ``time`` (else now).

Trace context: a CloudEvent's distributed-tracing extension (``traceparent``, ``tracestate``: ``ce_traceparent``
headers in binary mode, attributes in structured mode) is the run's trace, unless the record's own
``traceparent`` header names one (:mod:`shared.kafka.trace_context`); a malformed one is ignored.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import from_json

from shared.events import (
    RUN_REQUESTED_CLOUDEVENT_TYPE,
    DefinitionName,
    MassRemovalOverride,
    RangeRequested,
    RequestedBy,
    RunRequested,
    Trigger,
    cut_requested_by,
    utc_now,
)
from shared.kafka import Headers, RecordPosition
from shared.kafka.trace_context import event_carries

#: Namespace of run ids derived from a CloudEvent's (source, id).
CLOUDEVENT_RUN_NAMESPACE = uuid.UUID("6f1c43c6-2a8f-4c5e-9a43-0d4f3f2f6c1e")
#: Namespace of run ids derived from the record of a plain run request without ``run_id``.
RECORD_RUN_NAMESPACE = uuid.UUID("0b6f2a51-9d3e-4c07-8e5a-6a1f4d92c3b8")
_STRUCTURED = "application/cloudevents"
RANGE_REQUESTED = RangeRequested.model_fields["type"].default


class CloudEventRunData(BaseModel):
    """The ``data`` of a run-request CloudEvent: a plain run request's fields but ``trigger`` (``event``) and
    ``requested_at`` (the event's ``time``); unknown fields ignored."""

    model_config = ConfigDict(extra="ignore")

    definition: DefinitionName
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: uuid.UUID | None = None
    requested_by: RequestedBy | None = None
    scheduled_for: AwareDatetime | None = None
    definition_id: uuid.UUID | None = None
    allow_mass_removal: MassRemovalOverride = False


def record_run_id(position: RecordPosition) -> uuid.UUID:
    """The run id of a plain run request without ``run_id``: one per record, the same whenever it is read again.

    Named by the record's topic, partition, offset and timestamp (the timestamp stored with the record: a topic
    deleted and created again numbers its offsets from 0 again, but its records are other ones, with other times).
    A topic name holds no newline (Kafka allows letters, digits, ``.``, ``_`` and ``-``): the name is unambiguous.
    """
    return uuid.uuid5(
        RECORD_RUN_NAMESPACE, f"{position.topic}\n{position.partition}\n{position.offset}\n{position.timestamp}"
    )


def cloudevent_run_id(source: str, event_id: str) -> uuid.UUID:
    """The run id of a CloudEvent without ``data.run_id``: one per (source, id), the pair CloudEvents makes unique.

    ``source + "\\n" + id`` names the pair unambiguously unless one of them holds a newline (``("a\\nb", "c")``
    and ``("a", "b\\nc")`` would share it): only then is the pair named by its JSON array instead, so every
    other event keeps the run id it always had (a republished event still starts its run once across an upgrade).
    The two texts never meet: the old one always holds a newline (its separator), a JSON array's text never does.
    """
    ambiguous = "\n" in source or "\n" in event_id
    name = json.dumps([source, event_id]) if ambiguous else f"{source}\n{event_id}"
    return uuid.uuid5(CLOUDEVENT_RUN_NAMESPACE, name)


def _is_range_request(value: bytes) -> bool:
    """Whether the record says it is a range request (our run requests may leave their ``type`` out)."""
    if RANGE_REQUESTED.encode() not in value:
        return False
    try:
        data = from_json(value)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == RANGE_REQUESTED


def _header(headers: Headers, name: str) -> bytes | None:
    return next((value for key, value in headers if key.lower() == name), None)


def is_cloudevent(value: bytes, headers: Headers) -> bool:
    """Binary mode (a ``ce_specversion`` header) or structured mode (the CloudEvents content type, or a JSON
    object with a ``specversion`` under ``application/json`` or no content type: what some SDKs send)."""
    if _header(headers, "ce_specversion") is not None:
        return True
    content_type = _header(headers, "content-type")
    if content_type is not None and content_type.decode("latin-1").lower().startswith(_STRUCTURED):
        return True
    return _is_structured_json(value, content_type)


def _is_structured_json(value: bytes, content_type: bytes | None) -> bool:
    if content_type is not None and not content_type.decode("latin-1").lower().startswith("application/json"):
        return False
    if b'"specversion"' not in value:
        return False
    try:
        data = from_json(value)
    except ValueError:
        return False
    return isinstance(data, dict) and "specversion" in data


def decode_run_request(
    value: bytes, headers: Headers, position: RecordPosition | None = None
) -> RunRequested | RangeRequested:
    """A run request (or an extractor's request for one key range of a split run) from a record at ``position``;
    ValueError (or pydantic's ValidationError) says what is wrong.

    A plain run request without ``run_id`` gets its record's (:func:`record_run_id`); without a position (a
    record decoded by hand, not consumed) a new one. Whatever the record (any bytes, any headers, JSON nested to
    any depth), nothing else is raised.
    """
    if not is_cloudevent(value, headers):
        if _is_range_request(value):
            return RangeRequested.model_validate_json(value)
        request = RunRequested.model_validate_json(value)
        if position is None or "run_id" in request.model_fields_set:
            return request
        return request.model_copy(update={"run_id": record_run_id(position)})
    # Kafka allows a header without a value (None): no CloudEvent attribute, and the SDK would fail to decode it.
    message_headers = {k: v for k, v in headers if v is not None}
    if _header(headers, "ce_specversion") is None:
        # Structured mode whatever content type it came with: the SDK reads it by its CloudEvents type.
        message_headers = {k: v for k, v in message_headers.items() if k.lower() != "content-type"}
        message_headers["content-type"] = b"application/cloudevents+json"
    message = KafkaMessage(headers=message_headers, key=None, value=value)
    try:
        event = from_kafka(message, JSONFormat())
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types; all mean "not a valid CloudEvent"
        raise ValueError(f"not a valid CloudEvent: {exc}") from None
    # Reported before the event is judged: its dead letter, if any, belongs to the sender's trace too.
    event_carries(event.get_extension("traceparent"), event.get_extension("tracestate"))
    if event.get_type() != RUN_REQUESTED_CLOUDEVENT_TYPE:
        raise ValueError(
            f"unsupported CloudEvent type '{event.get_type()}'; expected '{RUN_REQUESTED_CLOUDEVENT_TYPE}'"
        )
    raw = event.get_data()
    # pydantic's JSON parser bounds the nesting depth (an error, not RecursionError as json.loads raises).
    data = (
        CloudEventRunData.model_validate_json(raw)
        if isinstance(raw, bytes | str)
        else CloudEventRunData.model_validate(raw)
    )
    source = str(event.get_source())
    return RunRequested(
        run_id=data.run_id or cloudevent_run_id(source, str(event.get_id())),
        definition=data.definition,
        trigger=Trigger.EVENT,
        requested_at=event.get_time() or utc_now(),
        # The source is the sender's (a URI of any length), not a name it chose for the run: cut to fit, not refused.
        requested_by=data.requested_by or cut_requested_by(source),
        parameters=data.parameters,
        scheduled_for=data.scheduled_for,
        definition_id=data.definition_id,
        allow_mass_removal=data.allow_mass_removal,
    )
