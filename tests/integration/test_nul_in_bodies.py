"""A NUL character in a request body's value (any text of any kind of object, a mapping's key, a secret, a run's or
a dry run's parameter) is refused, 422 naming the field and never quoting the value, and nothing is written or
published. Before, each was stored on SQLite and on PostgreSQL (whose json keeps the escape) to break later: a run's
business unit in PostgreSQL's text, a parameter bound to a PostgreSQL member store, a URL, a mail header.
The real app, in process, over SQLite and PostgreSQL; ``exportctl apply`` on the catalog and the console's form go
through the same check (``shared.application.checks.refuse_nul``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import SavedQuery
from tests.admin_app import InProcessApi, in_process_api, refused_writing_nothing, seed
from tests.integration.test_console_fields import signed_in

NOT_ALLOWED = "a NUL character (\\u0000) is not allowed"
NUL = "a\u0000b"
SECRET = "s3cr3t\u0000tail-9931"
PROFILE = {"name": "p2", "base_url": "https://partner.example.com"}
QUERY = {"name": "q2", "sql": "SELECT id FROM members"}
TEMPLATE = {"name": "t2", "query": "gold", "profile": "partner"}
DEFINITION = {"name": "d2", "query": "gold", "template": "upsert"}


@pytest.fixture
def api(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the console's test client
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        seed(client)  # "nightly" and what it uses exist: their steps, copies and runs are asked for
        yield api


CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "connection-profiles", PROFILE | {"label": NUL}, "ConnectionProfile 'p2': field 'label'"),
    ("POST", "connection-profiles", PROFILE | {"base_url": "https://part\u0000ner.example.com"}, "field 'base_url'"),
    (
        "POST",
        "connection-profiles",
        PROFILE | {"auth": {"type": "basic", "username": "u", "password": SECRET}},
        "ConnectionProfile 'p2': field 'auth.password'",
    ),
    ("POST", "saved-queries", QUERY | {"description": NUL}, "SavedQuery 'q2': field 'description'"),
    (
        "POST",
        "saved-queries",
        {"name": "q2", "sql": "SELECT id FROM members WHERE tier = :t", "parameters": {"t": {"default": NUL}}},
        "SavedQuery 'q2': field 'parameters.t.default'",
    ),
    ("POST", "http-templates", TEMPLATE | {"json_body": {NUL: "x"}}, "HttpTemplate 't2': field 'json_body.a\\u0000b'"),
    ("POST", "http-templates", TEMPLATE | {"query_string": {"q": NUL}}, "HttpTemplate 't2': field 'query_string.q'"),
    ("POST", "export-definitions", DEFINITION | {"business_unit": NUL}, "ExportDefinition 'd2': field 'business_unit'"),
    (
        "POST",
        "export-definitions",
        DEFINITION | {"notifications": {"webhooks": {"ops": {"url": "https://hooks.example.com/T\u00001"}}}},
        "ExportDefinition 'd2': field 'notifications.webhooks.ops.url'",
    ),
    ("PUT", "export-definitions/nightly", {"query": "gold", "template": "upsert", "label": NUL}, "field 'label'"),
    (
        "PUT",
        "export-definitions/nightly/filter",
        {"query": "gold", "parameters": {"tier": NUL}},
        "ExportDefinition 'nightly': field 'parameters.tier'",
    ),
    ("POST", "export-definitions/nightly/copy", {"label": NUL}, "field 'label'"),
    ("POST", "apply", {"objects": [{"kind": "SavedQuery", "spec": QUERY | {"label": NUL}}]}, "field 'label'"),
    ("POST", "export-definitions/nightly/runs", {"parameters": {"tier": NUL}}, "parameters: parameter 'tier'"),
    ("POST", "export-definitions/nightly/dry-run", {"parameters": {"tier": NUL}}, "parameters: parameter 'tier'"),
]


@pytest.mark.parametrize(("method", "path", "body", "named"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_a_nul_in_a_body_is_refused_naming_its_field_and_nothing_is_written(
    api: InProcessApi, method: str, path: str, body: dict[str, Any], named: str
):
    answer = refused_writing_nothing(api, method, path, body)
    assert f"{named}: {NOT_ALLOWED}" in answer.json()["detail"]
    assert "s3cr3t" not in answer.text  # a secret's field is named, its value never quoted


def test_exportctl_apply_on_the_catalog_refuses_a_nul_naming_its_field(
    api: InProcessApi, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys
):
    manifest = tmp_path / "query.yaml"
    manifest.write_text('kind: SavedQuery\nname: q2\nspec: {sql: "SELECT id FROM members", label: "a\\0b"}\n')
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", database_url)
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    assert exportctl(["apply", "-f", str(manifest)]) == 4  # refused or invalid
    assert f"SavedQuery 'q2': field 'label': {NOT_ALLOWED}" in capsys.readouterr().err
    assert api.app.state.context.definitions.find(SavedQuery, "q2") is None


def test_the_console_refuses_a_nul_beside_its_field(api: InProcessApi):
    with signed_in(api, "admin") as console:
        answer = console.post("/exports/nightly/general", {"label": NUL, "name": "nightly", "step": "filter"})
    assert answer.status_code == 422, answer.text
    shown = re.search(r'<p class="field-error" id="label-error">([^<]*)</p>', answer.text)  # beside the field
    assert shown is not None
    assert NOT_ALLOWED in unescape(shown[1])
    with api.client() as client:
        assert client.get("/api/v1/export-definitions/nightly").json()["label"] == "Nightly gold"
