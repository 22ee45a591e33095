"""Run-request CloudEvents refused or confused for reasons that are not theirs (session 51's contract hunt)."""

import json
import uuid

import pytest

from services.extractor.bulk_starts import started_event
from services.extractor.run_request_decoding import CLOUDEVENT_RUN_NAMESPACE, decode_run_request
from shared.events import RUN_EVENT_ADAPTER, RunRequested
from shared.kafka import Headers

TYPE = "io.member-export.run.requested.v1"
STRUCTURED = {"specversion": "1.0", "type": TYPE, "source": "crm", "id": "1", "data": {"definition": "gold"}}
BINARY = [
    ("ce_specversion", b"1.0"),
    ("ce_type", TYPE.encode()),
    ("ce_source", b"crm"),
    ("ce_id", b"1"),
    ("content-type", b"application/json"),
]
STRUCTURED_HEADERS = [("content-type", b"application/cloudevents+json")]


def _structured(**attributes: str) -> RunRequested:
    request = decode_run_request(json.dumps({**STRUCTURED, **attributes}).encode(), STRUCTURED_HEADERS)
    assert isinstance(request, RunRequested)
    return request


def test_a_binary_cloudevent_with_an_unrelated_header_without_value_starts_its_run():
    # Kafka allows a header with a null value (the client hands it as None); it used to dead-letter the event
    # ("not a valid CloudEvent: 'NoneType' object has no attribute 'decode'").
    headers: Headers = [*BINARY, ("x-debug", None)]
    request = decode_run_request(b'{"definition": "gold"}', headers)
    assert isinstance(request, RunRequested)
    assert request.definition == "gold"
    assert request.requested_by == "crm"


def test_the_cloudevents_content_type_is_matched_whatever_its_case():
    # Media types are case-insensitive; it used to be read as a plain run request and refused.
    request = decode_run_request(json.dumps(STRUCTURED).encode(), [("content-type", b"Application/CloudEvents+JSON")])
    assert isinstance(request, RunRequested)
    assert request.definition == "gold"


def test_two_different_cloudevents_never_share_a_run_id():
    # ("a\nb", "c") and ("a", "b\nc") are two events: the second used to be taken for a republished first.
    assert _structured(source="a\nb", id="c").run_id != _structured(source="a", id="b\nc").run_id
    assert _structured(source="a\nb", id="c").run_id == _structured(source="a\nb", id="c").run_id


def test_an_events_run_id_without_a_newline_is_the_one_it_always_had():
    # A republished event must start its run once across the upgrade: its run id is unchanged.
    for source, id_ in [("crm", "1"), ("https://crm.example/x", "e-42"), ('["crm"', '"1"]')]:
        expected = uuid.uuid5(CLOUDEVENT_RUN_NAMESPACE, f"{source}\n{id_}")
        assert _structured(source=source, id=id_).run_id == expected


def test_a_nul_in_requested_by_is_refused_naming_the_field():
    # A PostgreSQL catalog cannot record it: the run used to start and its record to fail.
    with pytest.raises(ValueError, match="requested_by"):
        decode_run_request(b'{"definition": "gold", "requested_by": "crm\\u0000sync"}', [])


def test_a_nul_in_a_cloudevents_source_is_dropped_from_requested_by_and_the_run_is_recorded(catalog):
    request = _structured(source="crm\x00sync")
    assert request.requested_by == "crmsync"
    record = started_event(request, request.definition, "run-events")
    catalog.runs.fold_run_event(RUN_EVENT_ADAPTER.validate_json(record.value))  # used to raise on PostgreSQL
