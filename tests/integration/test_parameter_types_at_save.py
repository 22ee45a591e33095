"""A definition's parameter values are held to the types its saved query declares when it is saved (the admin API's
create, replace, Filter step and apply; the console; ``exportctl apply``: one rule, ``shared.application.checks``):
a 422 naming the definition, the parameter and the type, in the words a run's binding uses. Before, such a value
was stored and every run of the definition failed (``invalid parameters: parameter 'tier': expected string: …``).

A definition stored before the rule keeps loading, being listed and shown; its runs are refused as before; its next
save is refused naming the parameter until the value is mended. The real app, in process, over SQLite.
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
from shared.domain.catalog_objects import ExportDefinition
from tests.admin_app import InProcessApi, in_process_api, refused_writing_nothing, seed
from tests.integration.test_console_fields import signed_in

#: The seed's query ``gold`` declares ``tier`` a string; what a run says of a value that is not one.
NOT_A_STRING = "expected string: Input should be a valid string"
#: A query declaring an integer parameter, and a template on it (for POST /apply and exportctl apply).
RICH = {
    "name": "rich",
    "sql": "SELECT id, email, tier, updated_at FROM members WHERE points >= :min_points",
    "parameters": {"min_points": {"type": "integer", "default": 0}},
}
RICH_TEMPLATE = {"name": "rich-upsert", "query": "rich", "profile": "partner", "path": "/members"}


@pytest.fixture
def api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the console's test client
    with in_process_api(tmp_path, migrated_catalog=migrated_catalog) as api, api.client() as client:
        seed(client)  # "nightly" on query "gold" (tier: string, default gold), template "upsert"
        yield api


CASES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "POST",
        "export-definitions",
        {"name": "d2", "query": "gold", "template": "upsert", "parameters": {"tier": 5}},
        f"ExportDefinition 'd2': field 'parameters.tier': {NOT_A_STRING}",
    ),
    (
        "PUT",
        "export-definitions/nightly",
        {"query": "gold", "template": "upsert", "parameters": {"tier": True}},
        f"ExportDefinition 'nightly': field 'parameters.tier': {NOT_A_STRING}",
    ),
    (
        "PUT",
        "export-definitions/nightly/filter",
        {"query": "gold", "parameters": {"tier": ["gold", "silver"]}},
        f"ExportDefinition 'nightly': field 'parameters.tier': {NOT_A_STRING}",
    ),
    (
        "POST",
        "apply",
        {
            "objects": [
                {"kind": "SavedQuery", "spec": RICH},
                {"kind": "HttpTemplate", "spec": RICH_TEMPLATE},
                {
                    "kind": "ExportDefinition",
                    "spec": {
                        "name": "rich-d",
                        "query": "rich",
                        "template": "rich-upsert",
                        "parameters": {"min_points": "lots"},
                    },
                },
            ]
        },
        "ExportDefinition 'rich-d': field 'parameters.min_points': expected integer: "
        "Input should be a valid integer, unable to parse string as an integer",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "said"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_a_parameter_value_not_of_its_declared_type_is_refused_at_save_naming_it_and_the_type(
    api: InProcessApi, method: str, path: str, body: dict[str, Any], said: str
):
    answer = refused_writing_nothing(api, method, path, body)
    assert answer.json()["type"].endswith("/problems/invalid-object")
    assert said in answer.json()["detail"]


def test_a_definition_stored_before_the_rule_still_loads_but_its_next_save_is_refused_until_mended(api: InProcessApi):
    api.app.state.context.definitions.apply(
        ExportDefinition(name="legacy", query="gold", template="upsert", parameters={"tier": 5})
    )
    with api.client() as client:
        assert "legacy" in [d["name"] for d in client.get("/api/v1/export-definitions").json()["items"]]
        assert client.get("/api/v1/export-definitions/legacy").json()["parameters"] == {"tier": 5}
        run = client.post("/api/v1/export-definitions/legacy/runs", json={})
        assert run.status_code == 422, run.text
        assert run.json()["detail"] == f"parameters: parameter 'tier': {NOT_A_STRING}"  # as before: the run's words
        schedule = client.put("/api/v1/export-definitions/legacy/schedule", json={"enabled": False})
        assert schedule.status_code == 422, schedule.text
        assert f"ExportDefinition 'legacy': field 'parameters.tier': {NOT_A_STRING}" in schedule.json()["detail"]
    with signed_in(api, "admin") as console:
        assert "legacy" in console.page("/exports")
        assert console.page("/exports/legacy")
        answer = console.post("/exports/legacy/steps/schedule", {"recurrence": ""})
        assert answer.status_code == 422, answer.text
        assert f"parameters.tier: {NOT_A_STRING}" in unescape(re.sub(r"<[^>]+>", "", answer.text))
        mended = console.post("/exports/legacy/steps/filter", {"query": "gold", "param.tier": "silver"})
        assert mended.status_code == 303, mended.text
    with api.client() as client:
        assert client.get("/api/v1/export-definitions/legacy").json()["parameters"] == {"tier": "silver"}
        assert client.put("/api/v1/export-definitions/legacy/schedule", json={"enabled": False}).status_code == 200


def test_exportctl_apply_refuses_a_parameter_value_not_of_its_declared_type(
    api: InProcessApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    manifest = tmp_path / "definition.yaml"
    manifest.write_text(
        "kind: ExportDefinition\nname: d2\nspec: {query: gold, template: upsert, parameters: {tier: 5}}\n"
    )
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    assert exportctl(["apply", "-f", str(manifest)]) == 4  # refused
    assert f"ExportDefinition 'd2': field 'parameters.tier': {NOT_A_STRING}" in capsys.readouterr().err
    assert api.app.state.context.definitions.find(ExportDefinition, "d2") is None
    # The rule at save is the run's: "100" for an integer binds (as 100), so it is saved as given, and runs.
    manifest.write_text(
        "\n---\n".join(
            yaml.safe_dump({"kind": kind, "spec": spec})
            for kind, spec in [
                ("SavedQuery", RICH),
                ("HttpTemplate", RICH_TEMPLATE),
                (
                    "ExportDefinition",
                    {"name": "rich-d", "query": "rich", "template": "rich-upsert"}
                    | {"parameters": {"min_points": "100"}},
                ),
            ]
        )
    )
    assert exportctl(["apply", "-f", str(manifest)]) == 0, capsys.readouterr().err
    with api.client() as client:
        assert client.get("/api/v1/export-definitions/rich-d").json()["parameters"] == {"min_points": "100"}
        assert client.post("/api/v1/export-definitions/rich-d/runs", json={}).status_code == 202
