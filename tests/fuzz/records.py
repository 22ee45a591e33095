"""The records of every topic, hostile, built from a seed (see :mod:`tests.fuzz.strategies`): the valid
events each topic carries (the seeds mutated), where hostile values go in them, and whole run-request
records with CloudEvents headers in binary and structured mode."""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any

from shared.events import (
    RUN_REQUESTED_CLOUDEVENT_TYPE,
    BatchOutcome,
    DeadLetter,
    ExtractionCompleted,
    MemberBatch,
    RunCancelled,
    RunFailed,
    RunMissed,
    RunRequested,
    RunSkipped,
    RunStarted,
    Trigger,
)
from tests.fuzz.strategies import KINDS, build, dumps, mutated, random_text

RUN = uuid.UUID("4f1c2d8e-0a7b-4a7e-9d1e-6f0b2a9c3e11")
NOW = "2026-03-01T02:00:00+00:00"


def _json(model: Any) -> dict[str, Any]:
    """``model`` as the JSON document its topic carries."""
    document: dict[str, Any] = json.loads(model.model_dump_json())
    return document


RUN_REQUEST_SEEDS: list[dict[str, Any]] = [
    {"type": "run.requested", "schema_version": 1, "definition": "nightly-gold"},
    _json(RunRequested(run_id=RUN, definition="d", trigger=Trigger.MANUAL, parameters={"tier": "gold", "n": 1})),
]
CLOUDEVENT_DATA_SEEDS: list[dict[str, Any]] = [
    {"definition": "nightly-gold"},
    {"definition": "d", "parameters": {"tier": "gold"}, "run_id": str(RUN), "requested_by": "crm"},
]
MEMBER_BATCH_SEEDS: list[dict[str, Any]] = [
    _json(MemberBatch(run_id=RUN, definition="d", template="t", batch_index=0, members=[{"id": 1, "email": "a@b"}])),
    _json(MemberBatch(run_id=RUN, definition="d", template="t", batch_index=7, members=[])),
]
RUN_EVENT_SEEDS: list[dict[str, Any]] = [
    _json(RunStarted(run_id=RUN, definition="d", trigger=Trigger.SCHEDULE, scheduled_for=NOW, replay_of=RUN)),
    _json(ExtractionCompleted(run_id=RUN, definition="d", members=10, batches=1)),
    _json(BatchOutcome(run_id=RUN, definition="d", batch_index=0, delivered=9, failed=1, status_code=422, error="x")),
    _json(RunFailed(run_id=RUN, definition="d", reason="query error")),
    _json(RunSkipped(run_id=RUN, definition="d", scheduled_for=NOW, reason="overlap")),
    _json(RunMissed(run_id=RUN, definition="d", scheduled_for=NOW, reason="down")),
    _json(RunCancelled(run_id=RUN, definition="d", requested_by="ops")),
]
DEAD_LETTER_SEEDS: list[dict[str, Any]] = [
    _json(DeadLetter(reason="invalid event", source_topic="t", service="extractor", payload="x", payload_size=1)),
    _json(
        DeadLetter(
            reason="422",
            source_topic="t",
            service="dispatcher",
            run_id=RUN,
            batch_index=0,
            members=[{"id": 1}],
            last_status=422,
            attempts=1,
        )
    ),
]
#: Where a hostile value goes inside each topic's documents.
RUN_REQUEST_PATHS: list[list[str | int]] = [["definition"], ["parameters", "tier"], ["parameters"], ["run_id"]]
MEMBER_BATCH_PATHS: list[list[str | int]] = [["members"], ["members", 0, "email"], ["members", 0], ["definition"]]
RUN_EVENT_PATHS: list[list[str | int]] = [["definition"], ["reason"], ["error"], ["members"], ["at"], ["type"]]
DEAD_LETTER_PATHS: list[list[str | int]] = [["reason"], ["members"], ["members", 0], ["payload"], ["payload_size"]]


def record_key(rng: random.Random) -> bytes | None:
    """A record key: none, a short random one, or one over the dead-letter key bound."""
    return rng.choice([None, rng.randbytes(rng.randint(0, 64)), b"\xff" * 5_000])


# --- run requests: our JSON event, CloudEvents in binary and structured mode ---------------------------

NESTED_CLOUDEVENT_DATA = b'{"definition": "x", "parameters": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
#: The record of the issue: a structured CloudEvent whose data (base64) is JSON nested 50,000 deep.
NESTED_CLOUDEVENT = (
    dumps(
        {
            "specversion": "1.0",
            "type": RUN_REQUESTED_CLOUDEVENT_TYPE,
            "source": "/crm",
            "id": "1",
            "datacontenttype": "application/json",
            "data_base64": base64.b64encode(NESTED_CLOUDEVENT_DATA).decode(),
        }
    ),
    [("content-type", b"application/cloudevents+json; charset=utf-8")],
)
CE_ENVELOPE_SEEDS: list[dict[str, Any]] = [
    {"specversion": "1.0", "type": RUN_REQUESTED_CLOUDEVENT_TYPE, "source": "/crm", "id": "1"},
    {"specversion": "1.0", "type": RUN_REQUESTED_CLOUDEVENT_TYPE, "source": "/crm", "id": "2", "time": NOW},
]
CE_DATA_PATHS: list[list[str | int]] = [["definition"], ["parameters"], ["parameters", "x"], ["run_id"]]
_CE_HEADER_VALUES = {
    "ce_specversion": [b"1.0", b"0.3", b""],
    "ce_type": [RUN_REQUESTED_CLOUDEVENT_TYPE.encode(), b"com.example.other"],
    "ce_source": [b"/crm", b""],
    "ce_id": [b"evt-1", b""],
    "ce_time": [b"2026-03-01T02:00:00Z", b"2026-03-01T02:00:00", b"yesterday", b"9999-99-99T99:99:99Z"],
    "content-type": [b"application/json", b"text/plain", b"application/octet-stream", b"application/cloudevents+json"],
    "ce_datacontenttype": [b"application/json", b"text/plain"],
}
#: The shapes of run-request records, by weight: CloudEvents twice each.
RUN_REQUEST_MODES = ["event", "binary", "binary", "structured", "structured", "any-headers", "tombstone"]


def _value_of(rng: random.Random, choices: list[bytes]) -> bytes:
    return rng.choice(choices) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 8))


def _cloudevent_headers(rng: random.Random) -> list[tuple[str, bytes]]:
    """Binary-mode headers: the four required attributes (now and then wrong or missing), some optional ones."""
    headers = [
        (name, _value_of(rng, values))
        for name, values in _CE_HEADER_VALUES.items()
        if rng.random() < (0.95 if name in ("ce_specversion", "ce_type", "ce_source", "ce_id") else 0.4)
    ]
    return headers + [(random_text(rng, 12), rng.randbytes(rng.randint(0, 8))) for _ in range(rng.randint(0, 2))]


def _structured_cloudevent(rng: random.Random, data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A structured-mode CloudEvent: its envelope near-valid, its data a JSON object, a string or base64."""
    envelope = mutated(rng, CE_ENVELOPE_SEEDS)
    form = rng.choice(["object", "string", "base64", "none"])
    if form == "base64":
        envelope["data_base64"] = base64.b64encode(data).decode()
    elif form == "string":
        envelope["data"] = data.decode("utf-8", errors="replace")
    elif form == "object":
        envelope["data"] = mutated(rng, CLOUDEVENT_DATA_SEEDS)
    content_type = rng.choice([b"application/cloudevents+json", b"application/cloudevents-batch+json"])
    return dumps(envelope), [("content-type", content_type)]


def run_request_record(seed: int) -> tuple[bytes | None, list[tuple[str, bytes]], bytes | None]:
    """The run-request record (value, headers, key) of ``seed``: our event, a CloudEvent in binary or
    structured mode, anything with any headers, or a tombstone."""
    rng = random.Random(seed)
    mode, kind, key = rng.choice(RUN_REQUEST_MODES), rng.choice(KINDS), record_key(rng)
    if mode == "event":
        return build(kind, rng, RUN_REQUEST_SEEDS, RUN_REQUEST_PATHS), [], key
    if mode == "tombstone":
        return None, _cloudevent_headers(rng), key
    data = build(kind, rng, CLOUDEVENT_DATA_SEEDS, CE_DATA_PATHS)
    if mode == "binary":
        return data, _cloudevent_headers(rng), key
    if mode == "structured":
        return (*_structured_cloudevent(rng, data), key)
    return data, [(random_text(rng, 12), rng.randbytes(rng.randint(0, 20))) for _ in range(rng.randint(0, 4))], key
