"""A saved query's save is refused while definitions stored on it would no longer fit it (a parameter's type changed
so that their value no longer binds, a parameter they set removed): 409 ``in-use`` naming each definition, its field
and why, in the words a definition's own save uses. Before, the query was saved and every run of those definitions
failed. A set applied in one go (``POST /apply``, ``exportctl apply``) that mends those definitions with the query is
saved. A copy of a definition is checked as any save (it kept a value its query refuses).

The real app, in process, over SQLite.
"""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from tests.admin_app import InProcessApi
from tests.integration.test_console_fields import signed_in
from tests.integration.test_parameter_types_at_save import api as seeded  # noqa: F401 (a fixture)

#: The seed's query ``gold`` (``tier``: a string), with ``tier`` declared an integer instead.
GOLD_INTEGER = {
    "name": "gold",
    "sql": "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier",
    "parameters": {"tier": {"type": "integer", "default": 1}},
}
#: The seed's query ``gold`` without its parameter.
GOLD_WITHOUT_TIER = {"name": "gold", "sql": "SELECT id, email, tier, updated_at FROM members"}
#: A template body using the column ``email``.
EMAIL_BODY = '{"emails": [{% for m in members %}"{{ m.email }}"{% if not loop.last %},{% endif %}{% endfor %}]}'
NOT_AN_INTEGER = "expected integer: Input should be a valid integer, unable to parse string as an integer"


@pytest.fixture
def api(seeded: InProcessApi) -> InProcessApi:  # noqa: F811 (the fixture of that name, imported)
    """The seed ("nightly" on query "gold", tier: string; template "upsert") and "silver", setting tier."""
    with seeded.client() as client:
        answer = client.post(
            "/api/v1/export-definitions",
            json={"name": "silver", "query": "gold", "template": "upsert", "parameters": {"tier": "silver"}},
        )
        assert answer.status_code == 201, answer.text
    return seeded


def _query_refused(api: InProcessApi, body: dict[str, Any], said: str) -> None:
    with api.client() as client:
        before = client.get("/api/v1/saved-queries/gold").json()
        audit_before = client.get("/api/v1/audit").json()
        answer = client.put("/api/v1/saved-queries/gold", json=body)
        assert answer.status_code == 409, answer.text
        assert answer.json()["type"].endswith("/problems/in-use")
        assert said in answer.json()["detail"]
        assert "nightly" not in answer.json()["detail"]  # sets no tier: the new query fits it
        assert client.get("/api/v1/saved-queries/gold").json() == before
        assert client.get("/api/v1/audit").json() == audit_before  # nothing written


def test_a_query_save_changing_a_parameters_type_is_refused_naming_the_definition_whose_value_would_not_bind(
    api: InProcessApi,
):
    _query_refused(api, GOLD_INTEGER, f"ExportDefinition 'silver': field 'parameters.tier': {NOT_AN_INTEGER}")


def test_a_query_save_removing_a_parameter_a_definition_sets_is_refused_naming_it(api: InProcessApi):
    _query_refused(
        api, GOLD_WITHOUT_TIER, "ExportDefinition 'silver': field 'parameters.tier': query 'gold' declares no such"
    )


def test_a_query_save_that_stops_returning_a_column_a_watermark_or_a_template_uses_is_refused_naming_them(
    api: InProcessApi,
):
    with api.client() as client:
        for collection, body in [
            ("http-templates", {"name": "by-email", "query": "gold", "profile": "partner", "body": EMAIL_BODY}),
            (
                "export-definitions",
                {
                    "name": "delta",
                    "query": "gold",
                    "template": "upsert",
                    "incremental": {"watermark_column": "updated_at"},
                },
            ),
        ]:
            assert client.post(f"/api/v1/{collection}", json=body).status_code == 201
    narrower = {"name": "gold", "sql": "SELECT id, tier FROM members WHERE tier = :tier"} | {
        "parameters": {"tier": {"type": "string", "default": "gold"}}
    }
    _query_refused(
        api,
        narrower,
        "ExportDefinition 'delta': field 'incremental.watermark_column': query 'gold' returns no column 'updated_at'",
    )
    _query_refused(
        api, narrower, "HttpTemplate 'by-email': field 'query': template 'by-email' uses column(s) email that query"
    )


def test_a_query_save_that_every_definition_still_fits_is_saved(api: InProcessApi):
    with api.client() as client:
        fits = GOLD_INTEGER | {"parameters": {"tier": {"type": "string", "default": "platinum"}}}
        answer = client.put("/api/v1/saved-queries/gold", json=fits)
        assert answer.status_code == 200, answer.text


def test_an_apply_that_mends_the_definitions_with_the_query_is_saved(api: InProcessApi):
    silver = {"name": "silver", "query": "gold", "template": "upsert", "parameters": {"tier": 2}}
    with api.client() as client:
        answer = client.post(
            "/api/v1/apply",
            json={
                "objects": [{"kind": "SavedQuery", "spec": GOLD_INTEGER}, {"kind": "ExportDefinition", "spec": silver}]
            },
        )
        assert answer.status_code == 200, answer.text
        assert client.get("/api/v1/export-definitions/silver").json()["parameters"] == {"tier": 2}
        assert client.get("/api/v1/saved-queries/gold").json()["parameters"]["tier"]["type"] == "integer"


def test_exportctl_apply_of_the_query_alone_is_refused_and_with_the_definition_mended_is_saved(
    api: InProcessApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    manifest = tmp_path / "query.yaml"
    manifest.write_text(yaml.safe_dump({"kind": "SavedQuery", "spec": GOLD_INTEGER}))
    assert exportctl(["apply", "-f", str(manifest)]) == 4  # refused
    assert f"ExportDefinition 'silver': field 'parameters.tier': {NOT_AN_INTEGER}" in capsys.readouterr().err
    store = api.app.state.context.definitions
    assert store.get(SavedQuery, "gold").parameters["tier"].type == "string"
    silver = {"name": "silver", "query": "gold", "template": "upsert", "parameters": {"tier": 3}}
    manifest.write_text(
        "\n---\n".join(
            yaml.safe_dump({"kind": kind, "spec": spec})
            for kind, spec in [("SavedQuery", GOLD_INTEGER), ("ExportDefinition", silver)]
        )
    )
    assert exportctl(["apply", "-f", str(manifest)]) == 0, capsys.readouterr().err
    assert store.get(ExportDefinition, "silver").parameters == {"tier": 3}


# --- a copy is a save -------------------------------------------------------------------------------------------


@pytest.fixture
def legacy(api: InProcessApi) -> InProcessApi:
    """A definition stored before parameter types were checked at save: ``tier`` (a string) holds 5."""
    api.app.state.context.definitions.apply(
        ExportDefinition(name="legacy", query="gold", template="upsert", parameters={"tier": 5})
    )
    return api


NOT_A_STRING = "field 'parameters.tier': expected string: Input should be a valid string"


def test_a_copy_through_the_api_of_a_definition_holding_a_value_its_query_refuses_is_refused(legacy: InProcessApi):
    with legacy.client() as client:
        answer = client.post("/api/v1/export-definitions/legacy/copy", json={"name": "legacy-2"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"].endswith("/problems/invalid-object")
        assert f"ExportDefinition 'legacy-2': {NOT_A_STRING}" in answer.json()["detail"]
        assert client.get("/api/v1/export-definitions/legacy-2").status_code == 404


def test_a_copy_through_the_console_of_such_a_definition_is_refused_saying_why(legacy: InProcessApi):
    with signed_in(legacy, "admin") as console:
        answer = console.post("/exports/legacy/copy", {})
        assert answer.status_code == 422, answer.text
        assert NOT_A_STRING in unescape(re.sub(r"<[^>]+>", "", answer.text))
    assert [d.name for d in legacy.app.state.context.definitions.list_objects(ExportDefinition)] == [
        "legacy",
        "nightly",
        "silver",
    ]


def test_exportctl_copy_of_such_a_definition_is_refused_saying_why(
    legacy: InProcessApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    assert exportctl(["copy", "ExportDefinition", "legacy", "--name", "legacy-2"]) == 4
    assert f"ExportDefinition 'legacy-2': {NOT_A_STRING}" in capsys.readouterr().err
    assert legacy.app.state.context.definitions.find(ExportDefinition, "legacy-2") is None


def test_exportctl_copy_of_a_query_needs_no_reachable_member_store_and_keeps_its_columns(
    api: InProcessApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A copy's SQL is the original's: its columns are taken as recorded, no query is run (a copy checked as a save
    must not start needing the member store)."""
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'no-such-dir' / 'members.db'}")
    assert exportctl(["copy", "SavedQuery", "gold", "--name", "gold-2"]) == 0
    copied = api.app.state.context.definitions.find(SavedQuery, "gold-2")
    original = api.app.state.context.definitions.find(SavedQuery, "gold")
    assert copied is not None
    assert original is not None
    assert copied.columns == original.columns != []
