"""The run-request contract, as a publisher meets it (session 55's contract hunt): a request without ``run_id`` is one
run however often its record is read, a CloudEvent's ``data`` takes what a plain request takes, the mass-removal
override is a JSON boolean only, and a query parameter is not read from a value of another JSON type."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.extractor.run_request_decoding import decode_run_request
from shared.domain.catalog_objects import SavedQuery, fit_problems
from shared.domain.query_parameters import ParameterError, QueryParameter, bind_values
from shared.domain.stored_rows import STORED_ROW
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE, RunRequested
from shared.kafka.loop import Rejection, decode_record


@dataclass(frozen=True)
class Position:
    topic: str = "exports.run-requests"
    partition: int = 0
    offset: int = 41
    timestamp: int = 1_796_000_000_000


PLAIN = b'{"definition": "gold", "requested_by": "crm-sync"}'


def _decoded(value: bytes, position: Position | None = Position(), headers: Any = ()) -> RunRequested:
    request = decode_record(decode_run_request, value, list(headers), position)
    assert isinstance(request, RunRequested), request
    return request


# --- 1. a request without run_id: one run per record ---------------------------------------------------------------


def test_a_request_without_run_id_read_twice_from_its_record_is_the_same_run():
    # What a redelivery (the extractor stopped before its commit) or a handed-back round (a store outage) does.
    assert _decoded(PLAIN).run_id == _decoded(PLAIN).run_id


positions = st.builds(
    Position,
    topic=st.sampled_from(["exports.run-requests", "p.exports.run-requests"]),
    partition=st.integers(0, 3),
    offset=st.integers(0, 2**40),
    timestamp=st.integers(0, 2**42),
)


@given(positions, positions)
def test_two_records_are_two_runs_and_a_record_is_one(first: Position, second: Position):
    assert (_decoded(PLAIN, first).run_id == _decoded(PLAIN, second).run_id) == (first == second)


def test_a_request_naming_its_run_id_keeps_it_wherever_its_record_is():
    run_id = uuid.uuid4()
    value = json.dumps({"definition": "gold", "run_id": str(run_id)}).encode()
    assert _decoded(value, Position(offset=1)).run_id == _decoded(value, Position(offset=2)).run_id == run_id


# --- 2. a CloudEvent's data takes what a plain request takes ---------------------------------------------------------

DUE = "2026-12-24T18:00:00+00:00"
DEFINITION_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _message(binding: Any, data: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    event = CloudEvent(
        attributes={
            "type": RUN_REQUESTED_CLOUDEVENT_TYPE,
            "source": "/crm",
            "id": "evt-7",
            "datacontenttype": "application/json",
        },
        data=data,
    )
    message = binding(event, JSONFormat())
    return message.value, list(message.headers.items())


@pytest.mark.parametrize("binding", [to_structured, to_binary], ids=["structured", "binary"])
def test_a_cloudevent_carries_the_mass_removal_override_and_the_due_instant_and_ignores_unknown_fields(binding):
    value, headers = _message(
        binding,
        {
            "definition": "gold",
            "allow_mass_removal": True,
            "scheduled_for": DUE,
            "definition_id": DEFINITION_ID,
            "added_by_a_newer_publisher": {"any": "thing"},
        },
    )
    request = _decoded(value, headers=headers)
    assert request.allow_mass_removal is True
    assert request.scheduled_for == dt.datetime(2026, 12, 24, 18, tzinfo=dt.UTC)
    assert request.definition_id == uuid.UUID(DEFINITION_ID)
    plain = _decoded(json.dumps({"definition": "gold", "added_by_a_newer_publisher": 1}).encode())
    assert plain.definition == request.definition  # the plain request ignores it too


# --- 4. the mass-removal override is a JSON boolean only --------------------------------------------------------------

LAX_TRUTHS = ['"yes"', '"on"', '"1"', "1", '"t"', '"y"', '"true"', "1.0"]


@pytest.mark.parametrize("truth", LAX_TRUTHS)
def test_a_mass_removal_override_that_is_no_json_boolean_is_refused_naming_the_field(truth: str):
    value = f'{{"definition": "gold", "allow_mass_removal": {truth}}}'.encode()
    rejection = decode_record(decode_run_request, value, [], Position())
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "invalid event: allow_mass_removal: Input should be a valid boolean"
    data = {"definition": "gold", "allow_mass_removal": json.loads(truth)}
    for binding in (to_structured, to_binary):
        event_value, headers = _message(binding, data)
        refused = decode_record(decode_run_request, event_value, headers, Position())
        assert isinstance(refused, Rejection)
        assert "allow_mass_removal: Input should be a valid boolean" in refused.reason


def test_a_mass_removal_override_of_true_or_false_is_taken():
    assert _decoded(b'{"definition": "gold", "allow_mass_removal": true}').allow_mass_removal is True
    assert _decoded(b'{"definition": "gold", "allow_mass_removal": false}').allow_mass_removal is False
    assert _decoded(b'{"definition": "gold"}').allow_mass_removal is False


# --- 4. a query parameter is not read from a value of another JSON type -------------------------------------------

DECLARED = {
    "min_points": QueryParameter(type="integer"),
    "ratio": QueryParameter(type="number"),
    "since": QueryParameter(type="date"),
    "after": QueryParameter(type="datetime"),
    "vip": QueryParameter(type="boolean"),
}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("min_points", True, "parameter 'min_points': expected integer: got a boolean"),
        ("min_points", False, "parameter 'min_points': expected integer: got a boolean"),
        ("ratio", True, "parameter 'ratio': expected number: got a boolean"),
        ("since", 0, "parameter 'since': expected date: got a number"),
        ("since", 1_796_000_000, "parameter 'since': expected date: got a number"),
        ("since", True, "parameter 'since': expected date: got a boolean"),
        ("after", 0, "parameter 'after': expected datetime: got a number"),
        ("after", 1.5e9, "parameter 'after': expected datetime: got a number"),
    ],
)
def test_a_run_parameter_of_another_json_type_fails_the_run_naming_it(name: str, value: Any, message: str):
    with pytest.raises(ParameterError, match=message):
        bind_values(DECLARED, {name: value})


@pytest.mark.parametrize(("name", "value"), [("min_points", True), ("since", 0), ("after", 0)])
def test_a_definition_giving_a_parameter_of_another_json_type_is_not_saved(name: str, value: Any):
    query = SavedQuery(name="q", sql="SELECT 1", parameters=DECLARED)
    [problem] = fit_problems({name: value}, None, query)
    assert problem.startswith(f"field 'parameters.{name}': expected ")


def test_a_default_of_another_json_type_is_refused_when_the_query_is_saved():
    with pytest.raises(ValidationError, match="expected date: got a number"):
        QueryParameter(type="date", default=0)


def test_text_and_values_of_the_parameters_own_type_are_still_read():
    bound = bind_values(
        DECLARED,
        {"min_points": "42", "ratio": 2, "since": "2026-01-31", "after": "2026-01-31T08:00:00Z", "vip": True},
    )
    assert bound == {
        "min_points": 42,
        "ratio": 2.0,
        "since": dt.date(2026, 1, 31),
        "after": dt.datetime(2026, 1, 31, 8, tzinfo=dt.UTC),
        "vip": True,
    }


# --- What the catalog already holds keeps running -------------------------------------------------------------------
# A query or definition saved before booleans and numbers were refused as numbers and dates is the catalog's own: it
# loads and binds as it did (lenient read), and the rule holds when it is saved again (strict write).


def test_a_query_stored_with_a_default_of_another_json_type_still_loads_and_binds_as_before():
    spec = {
        "name": "q",
        "sql": "SELECT 1 WHERE :since IS NOT NULL",
        "parameters": {"since": {"type": "date", "default": 0}},
    }
    stored = SavedQuery.model_validate(spec, context={STORED_ROW: True})
    assert bind_values(stored.parameters) == {"since": dt.date(1970, 1, 1)}
    with pytest.raises(ValidationError, match="expected date: got a number"):
        SavedQuery.model_validate(spec)  # saved again: refused


def test_a_definitions_stored_value_of_another_json_type_binds_as_before_and_a_run_requests_does_not():
    assert bind_values(DECLARED, {}, {"min_points": True, "since": 0})["min_points"] == 1
    assert bind_values(DECLARED, None, {"since": 0})["since"] == dt.date(1970, 1, 1)
    with pytest.raises(ParameterError, match="parameter 'min_points': expected integer: got a boolean"):
        bind_values(DECLARED, {"min_points": True}, {"min_points": 3})


def test_a_query_save_judges_the_stored_definitions_values_as_their_runs_bind_them():
    query = SavedQuery(name="q", sql="SELECT 1", parameters=DECLARED)
    assert fit_problems({"min_points": True, "since": 0}, None, query, stored=True) == []
    assert len(fit_problems({"min_points": True, "since": 0}, None, query)) == 2
