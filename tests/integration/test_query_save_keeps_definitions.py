"""A saved query's save is refused while definitions stored on it would no longer fit it (a parameter's type changed
so that their value no longer binds, a parameter they set removed): 409 ``in-use`` naming each definition, its field
and why, in the words a definition's own save uses. Before, the query was saved and every run of those definitions
failed. A set applied in one go (``POST /apply``, ``exportctl apply``) that mends those definitions with the query is
saved. A copy of a definition is checked as any save (it kept a value its query refuses).

The real app, in process, over SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from tests.admin_app import InProcessApi, in_process_api, seed
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
    detail = _refused(api, body)
    assert said in detail
    assert "nightly" not in detail  # sets no tier: the new query fits it


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


# --- a definition's template on another query; a parameter newly required (SQLite and PostgreSQL) ------------------

#: The seed's query ``gold`` no longer returning ``email`` (nor ``updated_at``).
GOLD_WITHOUT_EMAIL = {
    "name": "gold",
    "sql": "SELECT id, tier FROM members WHERE tier = :tier",
    "parameters": {"tier": {"type": "string", "default": "gold"}},
}
#: The seed's query ``gold`` with ``tier`` required, without default.
GOLD_TIER_REQUIRED = GOLD_INTEGER | {"parameters": {"tier": {"type": "string", "required": True}}}
#: ``by-email`` (on query ``plain``) uses the column ``email``, which ``gold`` no longer returns.
BY_EMAIL = "template 'by-email' uses column(s) email that query 'gold' does not return (it returns: id, tier)"
#: What the seed's scheduled ``nightly`` (no ``tier``) is told once ``tier`` is required without default.
TIER_REQUIRED = (
    "field 'parameters.tier': parameter 'tier' is required (string): its scheduled and chained runs are requested with "
    "no parameters"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def both(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    migrated_catalog: Callable[[str], CatalogStores],
) -> Iterator[tuple[InProcessApi, str]]:
    """The seed, "silver" (sets tier, not scheduled), "adhoc" (no tier, not scheduled), query "plain" and its
    template "by-email" (uses email), and "cross": on "gold" with "by-email" as its template, and "cross-changes": on
    "gold" in change mode, sending changed members with "by-email"; and the catalog's URL. Once on SQLite, once on
    PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database_factory")()
    with in_process_api(tmp_path, catalog_url=url, migrated_catalog=migrated_catalog) as api, api.client() as client:
        seed(client)
        for collection, body in [
            (
                "export-definitions",
                {"name": "silver", "query": "gold", "template": "upsert", "parameters": {"tier": "s"}},
            ),
            ("export-definitions", {"name": "adhoc", "query": "gold", "template": "upsert"}),
            ("saved-queries", {"name": "plain", "sql": "SELECT id, email, tier, updated_at FROM members"}),
            ("http-templates", {"name": "by-email", "query": "plain", "profile": "partner", "body": EMAIL_BODY}),
            ("export-definitions", {"name": "cross", "query": "gold", "template": "by-email"}),
            (
                "export-definitions",
                {
                    "name": "cross-changes",
                    "query": "gold",
                    "template": "upsert",
                    "sync": {"mode": "changes", "changed": "by-email"},
                },
            ),
        ]:
            answer = client.post(f"/api/v1/{collection}", json=body)
            assert answer.status_code == 201, answer.text
        yield api, url


def _refused(api: InProcessApi, body: dict[str, Any]) -> str:
    """The detail of the 409 ``in-use`` refusing ``body`` as query ``gold``'s save, nothing written."""
    with api.client() as client:
        before = client.get("/api/v1/saved-queries/gold").json()
        audit_before = client.get("/api/v1/audit").json()
        answer = client.put("/api/v1/saved-queries/gold", json=body)
        assert answer.status_code == 409, answer.text
        assert answer.json()["type"].endswith("/problems/in-use")
        assert client.get("/api/v1/saved-queries/gold").json() == before
        assert client.get("/api/v1/audit").json() == audit_before  # nothing written
        return str(answer.json()["detail"])


def test_a_query_save_dropping_a_column_a_definitions_template_on_another_query_uses_is_refused_naming_it(
    both: tuple[InProcessApi, str],
):
    """Before, the save was taken: every batch of a run of "cross" then failed rendering, its dry run too (422
    ``template-failed``: ``template 'by-email': template body (line 1): 'dict object' has no attribute 'email'``)."""
    api, _ = both
    detail = _refused(api, GOLD_WITHOUT_EMAIL)
    assert f"SavedQuery 'gold' would break ExportDefinition 'cross': field 'template': {BY_EMAIL}" in detail
    assert f"SavedQuery 'gold' would break ExportDefinition 'cross-changes': field 'sync.changed': {BY_EMAIL}" in detail
    assert "'by-email' uses" not in detail.replace("field 'template': template 'by-email'", "").replace(
        "field 'sync.changed': template 'by-email'", ""
    )  # the template itself is on "plain", which still returns email: not named as a template


def test_an_apply_that_mends_the_definitions_of_a_template_on_another_query_with_the_query_is_saved(
    both: tuple[InProcessApi, str],
):
    api, _ = both
    mended = [
        {"kind": "SavedQuery", "spec": GOLD_WITHOUT_EMAIL},
        {"kind": "ExportDefinition", "spec": {"name": "cross", "query": "gold", "template": "upsert"}},
        {"kind": "ExportDefinition", "spec": {"name": "cross-changes", "query": "gold", "template": "upsert"}},
    ]
    with api.client() as client:
        answer = client.post("/api/v1/apply", json={"objects": mended[:2]})
        assert answer.status_code == 409, answer.text  # cross-changes not mended
        assert "cross-changes" in answer.json()["detail"]
        assert "'cross'" not in answer.json()["detail"]
        answer = client.post("/api/v1/apply", json={"objects": mended})
        assert answer.status_code == 200, answer.text
        assert client.get("/api/v1/saved-queries/gold").json()["columns"] == ["id", "tier"]


def test_a_query_save_making_a_parameter_required_without_default_is_refused_naming_scheduled_definitions_without_it(
    both: tuple[InProcessApi, str],
):
    """Before, the save was taken and every scheduled run of "nightly" failed: ``invalid parameters: parameter 'tier'
    is required (string)``. "silver" gives tier; "adhoc" is not scheduled (its runs are requested with their
    values): neither is named."""
    api, _ = both
    detail = _refused(api, GOLD_TIER_REQUIRED)
    assert f"SavedQuery 'gold' would break ExportDefinition 'nightly': {TIER_REQUIRED}" in detail
    assert "silver" not in detail
    assert "adhoc" not in detail
    added: dict[str, Any] = {
        "name": "gold",
        "sql": "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier AND points >= :min_points",
        "parameters": {
            "tier": {"type": "string", "default": "gold"},
            "min_points": {"type": "integer", "required": True},
        },
    }
    detail = _refused(api, added)
    assert (
        "SavedQuery 'gold' would break ExportDefinition 'nightly': field 'parameters.min_points': parameter "
        "'min_points' is required (integer): its scheduled" in detail
    )
    with api.client() as client:  # with a default, nothing is needed of the definitions
        added["parameters"]["min_points"]["default"] = 0
        assert client.put("/api/v1/saved-queries/gold", json=added).status_code == 200


def test_a_scheduled_definition_not_giving_a_required_parameter_is_refused_at_its_own_save(
    both: tuple[InProcessApi, str],
):
    """The same rule and words at the definition's save (422 ``invalid-object``); an unscheduled one is saved."""
    api, _ = both
    nightly = {"name": "nightly", "query": "gold", "template": "upsert", "parameters": {"tier": "gold"}} | {
        "schedule": {"enabled": True, "repeat": {"every": "day", "time": "02:00"}}
    }
    objects = [{"kind": "SavedQuery", "spec": GOLD_TIER_REQUIRED}, {"kind": "ExportDefinition", "spec": nightly}]
    with api.client() as client:
        answer = client.post("/api/v1/apply", json={"objects": objects})  # the query with "nightly" mended
        assert answer.status_code == 200, answer.text
        scheduled = {
            "query": "gold",
            "template": "upsert",
            "schedule": {"enabled": True, "after": {"definition": "nightly"}},
        }
        answer = client.post("/api/v1/export-definitions", json={"name": "follower", **scheduled})
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"].endswith("/problems/invalid-object")
        assert f"ExportDefinition 'follower': {TIER_REQUIRED}" in answer.json()["detail"]
        answer = client.post(
            "/api/v1/export-definitions", json={"name": "on-demand", "query": "gold", "template": "upsert"}
        )
        assert answer.status_code == 201, answer.text


def test_exportctl_apply_of_such_query_saves_is_refused_and_with_the_definitions_mended_is_saved(
    both: tuple[InProcessApi, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    api, url = both
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", url)
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    manifest = tmp_path / "query.yaml"
    narrower_required = GOLD_WITHOUT_EMAIL | {"parameters": {"tier": {"type": "string", "required": True}}}
    manifest.write_text(yaml.safe_dump({"kind": "SavedQuery", "spec": narrower_required}))
    assert exportctl(["apply", "-f", str(manifest)]) == 4  # refused
    err = capsys.readouterr().err
    assert f"ExportDefinition 'cross': field 'template': {BY_EMAIL}" in err
    assert f"ExportDefinition 'nightly': {TIER_REQUIRED}" in err
    store = api.app.state.context.definitions
    assert store.get(SavedQuery, "gold").columns == ["id", "email", "tier", "updated_at"]
    mended = [
        ("SavedQuery", narrower_required),
        ("ExportDefinition", {"name": "cross", "query": "gold", "template": "upsert"}),
        ("ExportDefinition", {"name": "cross-changes", "query": "gold", "template": "upsert"}),
        (
            "ExportDefinition",
            {"name": "nightly", "query": "gold", "template": "upsert", "parameters": {"tier": "gold"}},
        ),
    ]
    manifest.write_text("\n---\n".join(yaml.safe_dump({"kind": kind, "spec": spec}) for kind, spec in mended))
    assert exportctl(["apply", "-f", str(manifest)]) == 0, capsys.readouterr().err
    assert store.get(SavedQuery, "gold").columns == ["id", "tier"]
    assert store.get(ExportDefinition, "cross").template == "upsert"
