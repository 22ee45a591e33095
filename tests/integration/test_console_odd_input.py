"""Odd input in the console's forms (YAML of another type or nested without end, numbers out of range, very long
values) is refused with the form again (4xx), never a 500; YAML nested without end (which PyYAML reads by recursion:
a RecursionError, a 500) is refused beside its field."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from services.admin.console.forms import NESTED_TOO_DEEPLY
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.integration.test_console_fields import Console, _csrf, _field_error

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

TEMPLATE = {"name": "upsert", "query": "gold", "profile": "partner", "method": "POST", "path": "/members"}
TEMPLATE |= {"batch_size": "2", "body_kind": "none"}
QUERY = {"name": "gold", "sql": "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier"}
QUERY |= {"key_column": "id"}
PROFILE = {"name": "partner", "base_url": "https://partner.example.com/v2", "auth_type": "none"}
DEEP = "[" * 3000 + "]" * 3000

CASES = [
    ("/templates/upsert", TEMPLATE | {"body_kind": "json_body", "json_body": DEEP}, "json_body"),
    ("/templates/upsert", TEMPLATE | {"body_kind": "json_body", "json_body": "sent: 2026-01-01"}, "json_body"),
    ("/templates/upsert", TEMPLATE | {"body_kind": "json_body", "json_body": "x: !!binary aGVsbG8="}, "json_body"),
    ("/templates/upsert", TEMPLATE | {"headers": "X-Date: 2026-01-01"}, "headers"),
    ("/templates/upsert", TEMPLATE | {"query_string": "since: 2026-01-01T00:00:00"}, "query_string"),
    ("/templates/upsert", TEMPLATE | {"headers": DEEP}, "headers"),
    ("/templates/upsert", TEMPLATE | {"batch_size": "9" * 400}, "batch_size"),
    ("/templates/upsert", TEMPLATE | {"success_statuses": "2" * 400}, "success_statuses"),
    ("/queries/gold", QUERY | {"parameters": "tier: {type: string, default: 2026-01-01}"}, "parameters"),
    ("/queries/gold", QUERY | {"parameters": DEEP}, "parameters"),
    ("/queries/gold", QUERY | {"timeout_seconds": "1e400"}, "timeout_seconds"),
    ("/queries/gold", QUERY | {"timeout_seconds": "nan"}, "timeout_seconds"),
    ("/profiles/partner", PROFILE | {"timeout_seconds": "nan"}, "timeout_seconds"),
    ("/profiles/partner", PROFILE | {"requests_per_second": "inf"}, "rate_limit"),
    ("/profiles/partner", PROFILE | {"requests_per_second": "1", "burst": "9" * 400}, "rate_limit"),
    ("/profiles/partner", PROFILE | {"circuit_breaker": "on", "circuit_breaker_failure_rate": "nan"}, "circuit"),
    ("/profiles/partner", PROFILE | {"base_url": "https://" + "a" * 70 + ".example.com"}, "base_url"),
    ("/profiles/partner", PROFILE | {"base_url": "https://[::1"}, "base_url"),
    ("/profiles/partner", PROFILE | {"base_url": "https://partner.example.com:99999/"}, "base_url"),
    ("/exports/nightly/steps/notifications", {"webhooks": DEEP}, "webhooks"),
    ("/exports/nightly/steps/notifications", {"webhooks": "ops: {url: https://h.example/x, since: 2026-01-01}"}, ""),
    ("/exports/nightly/steps/filter", {"query": "gold", "parameters": DEEP}, ""),  # no such field: ignored
    ("/exports/nightly/steps/filter", {"query": "gold", "parameters": "tier: 2026-01-01"}, "parameters"),
    ("/exports/nightly/steps/schedule", {"recurrence": "once", "once_date": "99999-01-01", "once_time": "25:61"}, ""),
    ("/exports/nightly/steps/schedule", {"recurrence": "repeat", "every": "day", "time": "9" * 300}, ""),
    ("/exports/nightly/steps/schedule", {"recurrence": "repeat", "advanced": "on", "cron": "* " * 400}, ""),
    ("/exports/nightly/steps/schedule", {"recurrence": "repeat", "every": "day", "time": "02:00", "from": "0"}, ""),
    ("/exports/nightly/steps/schedule", {"timezone": "../../etc/passwd", "recurrence": "repeat", "every": "day"}, ""),
    ("/exports/nightly/general", {"name": "nightly", "max_failure_percent": "nan", "priority": "high"}, ""),
    ("/exports/nightly/general", {"name": "nightly", "pause_after_failed_runs": "9" * 400}, ""),
    ("/exports/nightly/steps/destination", {"template": "upsert", "sync_max_removed": "1e999"}, ""),
    ("/exports/nightly/steps/destination", {"template": "upsert", "retry_runs": "-1"}, ""),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApi]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
        with in_process_api(tmp_path_factory.mktemp("odd")) as made:
            with made.client() as client:
                seed(client)
            yield made


@pytest.fixture(scope="module")
def console(api: InProcessApi) -> Iterator[Console]:
    with TestClient(api.app, raise_server_exceptions=False) as client:
        sign_in = client.get("/console/sign-in")
        answer = client.post(
            "/console/sign-in",
            data={"csrf_token": _csrf(sign_in.text), "token": api.tokens["admin"]},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        yield Console(client, _csrf(client.get("/console/exports").text))


@pytest.mark.parametrize(("path", "fields", "named"), CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_odd_input_is_a_4xx_naming_the_field(console: Console, path: str, fields: dict[str, str], named: str) -> None:
    answer = console.post(path, fields)
    assert answer.status_code < 500, answer.text[-2000:]
    if DEEP in fields.values() and named:  # a YAML field: refused beside it, saying why
        assert answer.status_code == 422, answer.text[-2000:]
        assert f'id="{named}-error">{NESTED_TOO_DEEPLY}' in answer.text


#: A date YAML reads as one (unquoted) that does not exist, in each kind of YAML field; where it is in the field.
NO_SUCH_DATE = [
    ("/templates/upsert", TEMPLATE | {"body_kind": "json_body", "json_body": "sent: 2026-13-45"}, "json_body", 7),
    ("/templates/upsert", TEMPLATE | {"headers": "X-Date: 2026-13-45"}, "headers", 9),
    ("/queries/gold", QUERY | {"parameters": "tier: {type: string, default: 2026-13-45}"}, "parameters", 31),
    (
        "/exports/nightly/steps/notifications",
        {"webhooks": "ops: {url: https://h.example/x, since: 2026-13-45}"},
        "webhooks",
        40,
    ),
]


@pytest.mark.parametrize(("path", "fields", "named", "column"), NO_SUCH_DATE, ids=[c[2] for c in NO_SUCH_DATE])
def test_a_date_that_does_not_exist_is_refused_beside_its_field_by_line_and_column(
    console: Console, path: str, fields: dict[str, str], named: str, column: int
) -> None:
    """Before: PyYAML's ValueError ("month must be in 1..12") escaped the console's reading: a 500."""
    answer = console.post(path, fields)
    assert answer.status_code == 422, answer.text[-2000:]
    said = f"a date or time that does not exist, or text to put in quotes (line 1, column {column})"
    assert _field_error(answer.text, named) == f"not valid YAML or JSON: {said}"


@pytest.mark.parametrize("collection", ["http-templates", "saved-queries"])
def test_json_nested_without_end_in_an_api_body_is_a_4xx(api: InProcessApi, collection: str) -> None:
    body = '{"name": "deep", "query": "gold", "profile": "partner", "sql": "SELECT 1", "json_body": ' + DEEP + "}"
    with api.client() as client:
        answer = client.post(f"/api/v1/{collection}", content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text[-2000:]


#: Nested past pydantic's own depth (its refusal named each level: ``json_body.list.0.list.0…``, ~1.9 KB twice).
NESTED_300 = {"lists": "[" * 300 + "1" + "]" * 300, "objects": '{"a":' * 300 + "1" + "}" * 300}
TOO_DEEP = "Value error, objects and lists are nested more than 64 deep"


def _posted(api: InProcessApi, collection: str, body: str) -> dict[str, Any]:
    with api.client() as client:
        answer = client.post(f"/api/v1/{collection}", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text[-2000:]
    assert len(answer.content) < 1000, answer.text[:2000]
    problem: dict[str, Any] = answer.json()
    return problem


@pytest.mark.parametrize("shape", sorted(NESTED_300))
def test_a_json_body_nested_too_deeply_is_a_short_422_naming_it(api: InProcessApi, shape: str) -> None:
    body = '{"name": "deep", "query": "gold", "profile": "partner", "json_body": ' + NESTED_300[shape] + "}"
    problem = _posted(api, "http-templates", body)
    assert problem["errors"] == [{"field": "body.json_body", "message": TOO_DEEP}]
    assert problem["detail"] == f"body.json_body: {TOO_DEEP}"


def test_a_json_body_deep_under_long_keys_is_told_with_its_place_cut_short(api: InProcessApi) -> None:
    """64 levels of 150-character keys: the place (``at kkk….kkk``) is cut in its middle, the reason kept whole."""
    nested = '{"' + "k" * 150 + '":'
    body = '{"name": "deep", "query": "gold", "profile": "partner", "json_body": ' + nested * 70 + "1" + "}" * 70 + "}"
    [error] = _posted(api, "http-templates", body)["errors"]
    assert error["field"] == "body.json_body"
    assert error["message"].startswith("Value error, at kkk")
    assert "…" in error["message"]
    assert error["message"].endswith(": objects and lists are nested more than 64 deep")
    assert len(error["message"]) <= len("Value error, ") + 300


def test_a_definition_parameter_nested_too_deeply_is_a_422_naming_it_not_a_500(api: InProcessApi) -> None:
    parameters = '{"tier": ' + NESTED_300["lists"] + "}"
    body = '{"name": "deep", "query": "gold", "template": "upsert", "parameters": ' + parameters + "}"
    problem = _posted(api, "export-definitions", body)
    message = "Value error, 'tier': objects and lists are nested more than 64 deep"
    assert problem["errors"] == [{"field": "body.parameters", "message": message}]
