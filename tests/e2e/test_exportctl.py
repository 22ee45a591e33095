"""exportctl as a user runs it."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def exportctl(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=env, capture_output=True, text=True, check=False
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
    assert lines[0] == "cron '30 2 * * *' (Asia/Kolkata): {'every': 'day', 'time': '02:30:00'}"
    assert len(lines) == 4
    assert all(line.strip().endswith("21:00 UTC)") and " 02:30 IST " in line for line in lines[1:])
