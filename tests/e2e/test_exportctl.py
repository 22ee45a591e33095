"""exportctl as a user runs it."""

import os
import subprocess
import sys

import pytest
import yaml

from shared.catalog import make_engine
from shared.querystore.demo_data import create_demo_members

pytestmark = pytest.mark.e2e


def exportctl(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "EXPORT_QUERY_STORE_URL": f"sqlite:///{tmp_path / 'no-members.db'}",
        "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
        **(env or {}),
    }
    if not (tmp_path / "catalog.db").exists():
        # An operator's first step on a new catalog (the services and exportctl refuse one without schema).
        subprocess.run([sys.executable, "-m", "shared.cli", "db", "upgrade"], env=environment, check=True)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=environment, capture_output=True, text=True, check=False
    )


def test_apply_names_the_file_the_object_and_the_field_of_a_bad_manifest(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "kind: ExportDefinition\nname: nightly\nspec:\n  query: q\n  template: t\n"
        "  schedule: {enabled: true, cron: '99 * * * *'}\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest))
    assert result.returncode == 2
    assert (
        f"{manifest}: document 1 (ExportDefinition 'nightly'): field 'schedule.cron': "
        "Value error, '99 * * * *' is not a valid CRON expression"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_refuses_references_to_objects_that_do_not_exist(tmp_path):
    manifest = tmp_path / "dangling.yaml"
    manifest.write_text("kind: ExportDefinition\nname: nightly\nspec: {query: gold, template: partner}\n")
    result = exportctl(tmp_path, "apply", "-f", str(manifest))
    assert result.returncode == 2
    assert "ExportDefinition 'nightly': field 'query': SavedQuery 'gold' does not exist" in result.stderr


def test_apply_is_idempotent_and_get_masks_secrets(tmp_path):
    manifest = tmp_path / "ok.yaml"
    manifest.write_text(
        "kind: ConnectionProfile\nname: partner\nspec:\n  base_url: https://api.example.com\n"
        "  auth: {type: bearer, token: very-secret-token}\n"
    )
    assert exportctl(tmp_path, "apply", "-f", str(manifest)).stdout == "ConnectionProfile/partner created\n"
    assert exportctl(tmp_path, "apply", "-f", str(manifest)).stdout == "ConnectionProfile/partner unchanged\n"
    shown = exportctl(tmp_path, "get", "ConnectionProfile", "partner").stdout
    assert "very-secret-token" not in shown
    assert "base_url: https://api.example.com" in shown


def test_run_of_an_unknown_definition_is_refused_before_anything_is_published(tmp_path):
    result = exportctl(tmp_path, "run", "nope")
    assert result.returncode == 2
    assert "ExportDefinition 'nope' does not exist" in result.stderr


def test_next_runs_previews_the_schedule_in_its_time_zone(tmp_path):
    manifest = tmp_path / "scheduled.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: q\nspec: {sql: 'select 1 as id'}\n---\n"
        "kind: ConnectionProfile\nname: p\nspec: {base_url: 'https://api.example.com'}\n---\n"
        "kind: HttpTemplate\nname: t\nspec: {query: q, profile: p}\n---\n"
        "kind: ExportDefinition\nname: nightly\nspec:\n  query: q\n  template: t\n"
        "  schedule: {enabled: true, timezone: Asia/Kolkata, cron: '30 2 * * *'}\n"
    )
    assert exportctl(tmp_path, "apply", "-f", str(manifest)).returncode == 0
    result = exportctl(tmp_path, "next-runs", "nightly", "-n", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cron '30 2 * * *' (Asia/Kolkata): {'every': 'day', 'time': '02:30'}"
    assert len(lines) == 4
    assert all(line.strip().endswith("21:00 UTC)") and " 02:30 IST " in line for line in lines[1:])


def _store(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(url)
    create_demo_members(engine, 20)
    engine.dispose()
    return url


QUERIES = """
kind: SavedQuery
name: by-tier
spec:
  sql: SELECT id, email, tier, updated_at FROM members WHERE tier = :tier
  parameters: {tier: {type: string, required: true}}
"""


def test_apply_discovers_a_saved_querys_columns_from_the_query_store(tmp_path):
    manifest = tmp_path / "queries.yaml"
    manifest.write_text(QUERIES)
    store = {"EXPORT_QUERY_STORE_URL": _store(tmp_path)}
    assert exportctl(tmp_path, "apply", "-f", str(manifest), env=store).stdout == "SavedQuery/by-tier created\n"
    shown = yaml.safe_load(exportctl(tmp_path, "get", "SavedQuery", "by-tier", env=store).stdout)
    assert shown["spec"]["columns"] == ["id", "email", "tier", "updated_at"]
    assert exportctl(tmp_path, "apply", "-f", str(manifest), env=store).stdout == "SavedQuery/by-tier unchanged\n"


def test_apply_refuses_a_query_the_store_cannot_run_or_that_lacks_its_key(tmp_path):
    manifest = tmp_path / "queries.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: typo\nspec: {sql: 'SELECT id FROM memberz'}\n---\n"
        "kind: SavedQuery\nname: keyless\nspec: {sql: 'SELECT email FROM members'}\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_QUERY_STORE_URL": _store(tmp_path)})
    assert result.returncode == 2
    assert "SavedQuery 'typo': field 'sql': query 'typo' failed: no such table: memberz" in result.stderr
    assert (
        "SavedQuery 'keyless': field 'key_column': the query returns no column 'id' (it returns: email)"
        in result.stderr
    )


def test_apply_refuses_a_definition_that_does_not_fit_its_query(tmp_path):
    manifest = tmp_path / "all.yaml"
    manifest.write_text(
        QUERIES
        + "---\nkind: ConnectionProfile\nname: p\nspec: {base_url: 'http://127.0.0.1:9'}\n"
        + "---\nkind: HttpTemplate\nname: t\nspec: {query: by-tier, profile: p}\n"
        + "---\nkind: ExportDefinition\nname: changed-gold\nspec:\n  query: by-tier\n  template: t\n"
        + "  parameters: {tier: gold, country: FR}\n  incremental: {watermark_column: modified_at}\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_QUERY_STORE_URL": _store(tmp_path)})
    assert result.returncode == 2
    assert (
        "ExportDefinition 'changed-gold': field 'parameters.country': query 'by-tier' declares no such parameter"
        in (result.stderr)
    )
    assert "field 'incremental.watermark_column': query 'by-tier' returns no column 'modified_at'" in result.stderr


def test_run_refuses_a_parameter_of_the_wrong_type_before_publishing(tmp_path):
    manifest = tmp_path / "all.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: rich\nspec:\n  sql: SELECT id FROM members WHERE points >= :min_points\n"
        "  parameters: {min_points: {type: integer, default: 0}}\n"
        "---\nkind: ConnectionProfile\nname: p\nspec: {base_url: 'http://127.0.0.1:9'}\n"
        "---\nkind: HttpTemplate\nname: t\nspec: {query: rich, profile: p}\n"
        "---\nkind: ExportDefinition\nname: rich-members\nspec: {query: rich, template: t}\n"
    )
    store = {"EXPORT_QUERY_STORE_URL": _store(tmp_path)}
    assert exportctl(tmp_path, "apply", "-f", str(manifest), env=store).returncode == 0
    result = exportctl(tmp_path, "run", "rich-members", "--param", "min_points=lots", env=store)
    assert result.returncode == 2
    assert "parameter 'min_points': expected integer" in result.stderr


def test_apply_refuses_a_profile_pointing_at_a_private_or_metadata_address(tmp_path):
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        "kind: ConnectionProfile\nname: metadata\nspec: {base_url: 'http://169.254.169.254/latest'}\n---\n"
        "kind: ConnectionProfile\nname: intranet\nspec: {base_url: 'http://10.1.2.3'}\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_ALLOWED_DESTINATIONS": ""})
    assert result.returncode == 2
    assert (
        "ConnectionProfile 'metadata': field 'base_url': destination 169.254.169.254 (169.254.169.254) is a "
        "link-local (cloud metadata) address; allow it explicitly in EXPORT_ALLOWED_DESTINATIONS"
    ) in result.stderr
    assert "ConnectionProfile 'intranet': field 'base_url': destination 10.1.2.3 (10.1.2.3) is a private" in (
        result.stderr
    )
    allowed = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_ALLOWED_DESTINATIONS": "10.0.0.0/8"})
    assert "10.1.2.3" not in allowed.stderr


def test_apply_refuses_a_template_that_does_not_render_for_the_querys_members(tmp_path):
    manifest = tmp_path / "templates.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: few\nspec: {sql: 'SELECT id, email FROM members'}\n"
        "---\nkind: ConnectionProfile\nname: p\nspec: {base_url: 'http://127.0.0.1:9'}\n"
        "---\nkind: HttpTemplate\nname: unquoted\nspec:\n  query: few\n  profile: p\n"
        '  body: |\n    {"members": [\n    {% for m in members %}{{ m.email }}{% endfor %}]}\n'
        "---\nkind: HttpTemplate\nname: unknown-column\nspec:\n  query: few\n  profile: p\n"
        "  body: '{\"nick\": {{ member.nickname | tojson }}}'\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_QUERY_STORE_URL": _store(tmp_path)})
    assert result.returncode == 2
    assert (
        "HttpTemplate 'unquoted': field 'body': template body renders invalid JSON at line 2, column" in result.stderr
    )
    assert (
        "HttpTemplate 'unknown-column': field 'query': template 'unknown-column' uses column(s) nickname "
        "that query 'few' does not return"
    ) in result.stderr
