"""The admin API's contract (issue 20), in-process over real SQLite stores: what the OpenAPI document says
is what the server does. Errors are problem details declared under the media type sent; a 405 says
``Allow``; values are parsed strictly; the schedule has one name per field; an Idempotency-Key names
one request; the rules the server enforces are in the JSON Schema where it can say them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from tests.admin_app import InProcessApi, in_process_api, seed

DEFINITION = "/api/v1/export-definitions/nightly"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path_factory.mktemp("contract")) as in_process, in_process.client() as client:
        seed(client)
        yield in_process


@pytest.fixture(scope="module")
def spec(api: InProcessApi) -> dict[str, Any]:
    with api.client(None) as anonymous:
        document: dict[str, Any] = anonymous.get("/openapi.json").json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    return body


def _fields(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem.get("errors", [])]


# --- the OpenAPI document ---------------------------------------------------------------------------


def test_every_error_response_is_the_problem_schema_under_problem_json(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if status[0] in "45":
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, status)
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 body, which this API never sends
    assert set(schemas["Problem"]["required"]) == {"title", "status"}
    assert schemas["Problem"]["properties"]["errors"]["anyOf"][0]["items"] == {
        "$ref": "#/components/schemas/FieldError"
    }


def test_routes_document_the_statuses_they_answer_and_healthz_needs_no_token(spec: dict[str, Any]) -> None:
    assert set(spec["paths"]["/healthz"]["get"]["responses"]) == {"200"}
    for method, path, operation in _operations(spec):
        if path.startswith("/api/"):
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in operation["responses"], (method, path)
        if "requestBody" in operation:
            assert "413" in operation["responses"], (method, path)


def test_an_error_body_matches_the_documented_problem_schema(api: InProcessApi, spec: dict[str, Any]) -> None:
    problem_schema = {"$ref": "#/components/schemas/Problem", "components": spec["components"]}
    with api.client() as client:
        answers = [
            client.get("/api/v1/saved-queries/nothing-here"),
            client.post("/api/v1/saved-queries", json={"sql": ""}),
            client.get("/api/v1/runs", params={"until": "0.5"}),
        ]
    with api.client(None) as anonymous:
        answers.append(anonymous.get("/api/v1/runs"))
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        jsonschema_rs.validate(problem_schema, answer.json())


# --- 405 --------------------------------------------------------------------------------------------


def test_a_method_a_path_does_not_have_is_a_405_saying_allow(api: InProcessApi) -> None:
    with api.client() as client:
        answer = client.request("PATCH", "/api/v1/saved-queries/gold")
        _problem(answer, 405)
        assert answer.headers["allow"] == "DELETE, GET, PUT"
        healthz = client.post("/healthz")
        _problem(healthz, 405)
        assert healthz.headers["allow"] == "GET"


# --- strict parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.5", "1700000000", "yesterday"])
def test_a_date_time_parameter_is_not_a_unix_timestamp(api: InProcessApi, value: str) -> None:
    with api.client() as client:
        for url, name in [("/api/v1/runs", "until"), ("/api/v1/runs", "since"), ("/api/v1/audit", "since")]:
            problem = _problem(client.get(url, params={name: value}), 422)
            assert _fields(problem) == [f"query.{name}"]
            assert "ISO 8601" in problem["detail"]
        assert client.get("/api/v1/runs", params={"until": "2026-01-31T02:00:00Z"}).status_code == 200


@pytest.mark.parametrize("value", [0, 1, "false", "yes", None])
def test_a_boolean_is_only_true_or_false(api: InProcessApi, value: Any) -> None:
    with api.client() as client:
        schedule = {"enabled": value, "repeat": {"every": "day", "time": "02:00"}}
        problem = _problem(client.put(f"{DEFINITION}/schedule", json=schedule), 422)
        assert _fields(problem) == ["body.enabled"]
        notifications = {"error": {"enabled": value, "recipients": ["ops@example.com"]}}
        problem = _problem(client.put(f"{DEFINITION}/notifications", json=notifications), 422)
        assert _fields(problem) == ["body.error.enabled"]


@pytest.mark.parametrize("value", ["1", "0", "yes", "True"])
def test_a_boolean_query_parameter_is_only_true_or_false(api: InProcessApi, value: str) -> None:
    with api.client() as client:
        problem = _problem(client.get("/api/v1/export-definitions", params={"enabled": value}), 422)
        assert _fields(problem) == ["query.enabled"]
        assert client.get("/api/v1/export-definitions", params={"enabled": "true"}).json()["total"] == 1


def test_a_date_is_text_not_a_number(api: InProcessApi) -> None:
    with api.client() as client:
        problem = _problem(client.put(f"{DEFINITION}/schedule", json={"from": 20_000}), 422)
        assert _fields(problem) == ["body.from"]
        once = {"once": {"date": 1_767_225_600, "time": "02:00"}}
        assert _fields(_problem(client.put(f"{DEFINITION}/schedule", json=once), 422)) == ["body.once.date"]


# --- the schedule's field names ---------------------------------------------------------------------


def test_the_schedule_bounds_are_from_and_to_on_input_output_and_in_the_schema(
    api: InProcessApi, spec: dict[str, Any]
) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("Schedule-Input", "Schedule-Output"):
        properties = schemas[name]["properties"]
        assert {"from", "to"} <= set(properties), name
        assert not {"start_date", "end_date"} & set(properties), name
        assert schemas[name]["additionalProperties"] is False
    with api.client() as client:
        schedule = {"enabled": False, "cron": "0 2 * * *", "from": "2026-01-01", "to": "2026-12-31"}
        saved = client.put(f"{DEFINITION}/schedule", json=schedule)
        assert saved.status_code == 200, saved.text
        assert {key: saved.json()["schedule"][key] for key in ("from", "to")} == {
            "from": "2026-01-01",
            "to": "2026-12-31",
        }
        assert client.get(DEFINITION).json()["schedule"]["from"] == "2026-01-01"


def test_the_old_names_of_the_bounds_are_refused_saying_the_new_ones(api: InProcessApi) -> None:
    with api.client() as client:
        problem = _problem(client.put(f"{DEFINITION}/schedule", json={"start_date": "2026-01-01"}), 422)
        assert "'start_date' is not a field: the schedule's bound is 'from'" in problem["detail"]
        definition = client.get(DEFINITION).json()
        definition["schedule"] = {"end_date": "2026-12-31"}
        problem = _problem(client.put(DEFINITION, json=definition), 422)
        assert _fields(problem) == ["body.schedule"]
        assert "'end_date' is not a field: the schedule's bound is 'to'" in problem["detail"]


# --- rules in the schema ----------------------------------------------------------------------------


def _validator(spec: dict[str, Any], schema: str) -> jsonschema_rs.Draft202012Validator:
    document = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    return jsonschema_rs.Draft202012Validator(document)


@pytest.mark.parametrize(
    ("collection", "schema", "body", "field"),
    [
        ("http-templates", "HttpTemplateInput", {"query": "gold", "profile": "partner", "path": "members"}, "path"),
        ("saved-queries", "SavedQueryInput", {"sql": ""}, "sql"),
        (
            "connection-profiles",
            "ConnectionProfileInput",
            {"base_url": "https://partner.example.com", "rate_limit": {"burst": 3}},
            "rate_limit",
        ),
        (
            "export-definitions",
            "ExportDefinitionInput",
            {"query": "gold", "template": "upsert", "notifications": {"success": {"enabled": True}}},
            "notifications.success",
        ),
    ],
)
def test_a_rule_the_server_enforces_is_in_the_schema_too(
    api: InProcessApi, spec: dict[str, Any], collection: str, schema: str, body: dict[str, Any], field: str
) -> None:
    """A client validating with the schema refuses what the server refuses, before sending it."""
    assert not _validator(spec, schema).is_valid(body)
    with api.client() as client:
        problem = _problem(client.post(f"/api/v1/{collection}", json=body), 422)
    assert any(name.startswith(f"body.{field}") for name in _fields(problem)), problem


# --- Idempotency-Key --------------------------------------------------------------------------------


def test_the_same_key_and_request_is_the_same_run_published_under_one_run_id(api: InProcessApi) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    published = len(api.publisher.run_requests)
    with api.client("operator") as client:
        first = client.post(f"{DEFINITION}/runs", json={"parameters": {"tier": "silver"}}, headers=key)
        again = client.post(f"{DEFINITION}/runs", json={"parameters": {"tier": "silver"}}, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["run_id"] == again.json()["run_id"]
    # The run is still queued (nothing starts it here): its request is published again, under the same run id (the
    # extractor starts it once), as a retry after a 503 kafka-unavailable needs.
    assert [str(r.run_id) for r in api.publisher.run_requests[published:]] == [first.json()["run_id"]] * 2


@pytest.mark.parametrize(
    "second",
    [
        {"json": {"parameters": {"tier": "platinum"}}},  # other parameters
        {"json": {}},  # no parameters where the first had some
        {"url": "/api/v1/export-definitions/nightly-copy/runs", "json": {"parameters": {"tier": "silver"}}},
    ],
)
def test_a_key_reused_for_a_different_request_is_refused(api: InProcessApi, second: dict[str, Any]) -> None:
    with api.client() as client:
        if client.get("/api/v1/export-definitions/nightly-copy").status_code == 404:
            assert client.post(f"{DEFINITION}/copy", json={"name": "nightly-copy"}).status_code == 201
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    with api.client("operator") as client:
        first = client.post(f"{DEFINITION}/runs", json={"parameters": {"tier": "silver"}}, headers=key)
        assert first.status_code == 202
        published = len(api.publisher.run_requests)
        refused = client.post(second.get("url", f"{DEFINITION}/runs"), json=second["json"], headers=key)
        problem = _problem(refused, 422)
        assert problem["type"].endswith("/idempotency-key-reused")
        assert "was already used for a different request" in problem["detail"]
        # Refused again when retried; the first request's retry still finds its run.
        assert client.post(second.get("url", f"{DEFINITION}/runs"), json=second["json"], headers=key).status_code == 422
        retried = client.post(f"{DEFINITION}/runs", json={"parameters": {"tier": "silver"}}, headers=key)
        assert retried.json()["run_id"] == first.json()["run_id"]
    # Nothing of the refused requests; the retry publishes the first run again (still queued), under its run id:
    # one publication since the first request's own.
    assert [str(r.run_id) for r in api.publisher.run_requests[published:]] == [first.json()["run_id"]]


def test_a_key_is_the_callers_own(api: InProcessApi) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    with api.client("operator") as operator, api.client("admin") as admin:
        mine = operator.post(f"{DEFINITION}/runs", headers=key).json()["run_id"]
        theirs = admin.post(f"{DEFINITION}/runs", json={"parameters": {"tier": "x"}}, headers=key)
    assert theirs.status_code == 202
    assert theirs.json()["run_id"] != mine
