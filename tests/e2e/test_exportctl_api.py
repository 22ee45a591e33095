"""exportctl through the admin API, against the running pipeline: every command as a user sees it, in the
API mode and (where both exist) beside direct mode; progress, exit codes, formats, contexts and flags."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools.processes import wait_until
from tests.admin_server import AdminServer, admin_server
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

#: A saved query with a parameter, and a definition of it: for idempotency keys with other parameters.
PARAMETERISED = """
kind: SavedQuery
name: first-n
spec:
  sql: SELECT id, email FROM members WHERE id <= :max_id
  parameters: {max_id: {type: integer, default: 5}}
---
kind: HttpTemplate
name: first-n-to-good
spec: {query: first-n, profile: good-partner, path: /v1/members, batch_size: 50}
---
kind: ExportDefinition
name: first-n-to-good
spec:
  query: first-n
  template: first-n-to-good
  schedule: {enabled: false, timezone: Asia/Kolkata, cron: '30 2 * * *'}
"""


@pytest.fixture(scope="module")
def admin(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    """The admin API on the pipeline's catalog and topics (one for the module: it takes seconds to start)."""
    with admin_server(
        tmp_path_factory.mktemp("admin"),
        pipeline.env["EXPORT_CATALOG_URL"],
        pipeline.bootstrap,
        pipeline.env["EXPORT_QUERY_STORE_URL"],
        topic_prefix=pipeline.env["EXPORT_TOPIC_PREFIX"],
    ) as server:
        yield server


def as_(admin: AdminServer, who: str, url: str | None = None) -> dict[str, str]:
    """The environment of exportctl through the API as ``who`` (no config file of the user's)."""
    return {
        "EXPORT_API_URL": url or admin.url,
        "EXPORT_API_TOKEN": admin.tokens[who],
        "EXPORTCTL_CONFIG": "/nonexistent/exportctl.yaml",
    }


def no_traceback(result: subprocess.CompletedProcess[str], code: int, message: str = "") -> None:
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr


def test_run_wait_shows_progress_and_a_summary(pipeline: Pipeline, admin: AdminServer):
    run = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "240", env=as_(admin, "operator"))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("run ")
    assert lines[0].endswith("requested for 'small-to-good-partner'")
    bar = [line for line in lines if "100/100" in line]  # the progress bar's last state
    assert bar, run.stdout
    assert "succeeded" in bar[-1]
    assert "delivered 100 failed 0" in bar[-1]
    assert "': succeeded" in run.stdout
    assert "read: 100  delivered: 100  failed: 0" in run.stdout  # the summary


def test_a_run_that_delivers_nothing_says_so_and_its_replay_is_linked_in_both_modes(
    pipeline: Pipeline, admin: AdminServer
):
    run = pipeline.exportctl("run", "small-to-strict-partner", "--wait", "--timeout", "240", env=as_(admin, "operator"))
    no_traceback(run, 1)
    bar = [line for line in run.stdout.splitlines() if "100/100" in line]
    assert bar, run.stdout
    assert "delivered 0 failed 100" in bar[-1]  # not a full bar that reads as success
    assert "read: 100  delivered: 0  failed: 100" in run.stdout
    run_id = re.search(r"^run (\S+) requested", run.stdout, re.MULTILINE)
    assert run_id is not None
    original = run_id.group(1)

    replay = pipeline.exportctl("dead-letters", "replay", original, "--wait", "--timeout", "240")
    assert replay.stdout.startswith("run "), replay.stdout + replay.stderr
    replay_id = replay.stdout.split()[1]
    through_api = pipeline.exportctl("runs", "--id", original, env=as_(admin, "viewer"))
    direct = pipeline.exportctl("runs", "--id", original)
    assert through_api.returncode == direct.returncode == 0, through_api.stderr + direct.stderr
    assert f"  replayed by run {replay_id}: " in through_api.stdout
    assert through_api.stdout == direct.stdout  # one view of a run, whichever way
    as_json = json.loads(pipeline.exportctl("runs", "--id", original, "-o", "json", env=as_(admin, "viewer")).stdout)
    assert as_json["replayed_by"] == [replay_id]
    listed = pipeline.exportctl("dead-letters", "list", "--run", original, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert sum(group["members"] for group in json.loads(listed.stdout)) == 100


def test_a_wait_that_times_out_says_the_real_timeout_and_exits_1(pipeline: Pipeline, admin: AdminServer):
    # A slow partner (half a second a request) so that the run cannot finish within the timeout.
    pipeline.good.state.delay = 0.5
    try:
        run = pipeline.exportctl("run", "to-good-partner", "--wait", "--timeout", "0.2", env=as_(admin, "operator"))
    finally:
        pipeline.good.state.delay = 0.0
    no_traceback(run, 1, "did not finish within 0.2s; it goes on (exportctl runs --id ")
    found = re.search(r"runs --id ([0-9a-f-]{36})", run.stderr)
    assert found is not None, run.stderr
    run_id = uuid.UUID(found.group(1))
    # It does go on: the next tests start from a finished run.
    wait_until(
        lambda: (record := pipeline.catalog.runs.get_run(run_id)) is not None and record.status.is_final,
        timeout=120,
        what="the timed-out run's end",
    )


def test_bad_input_through_the_api_is_a_message_and_an_exit_code(pipeline: Pipeline, admin: AdminServer):
    viewer = as_(admin, "viewer")
    no_traceback(pipeline.exportctl("runs", "--id", "nope", env=viewer), 2, "'nope' is not a run id")
    no_traceback(pipeline.exportctl("runs", "--id", str(uuid.uuid4()), env=viewer), 3, "exportctl: 404: ")
    no_traceback(
        pipeline.exportctl("apply", "-f", "/nonexistent.yaml", env=as_(admin, "editor")),
        4,
        "/nonexistent.yaml: cannot be read",
    )
    no_traceback(pipeline.exportctl("describe", "def", "nope", env=viewer), 3, "exportctl: 404: ")
    no_traceback(pipeline.exportctl("next-runs", "nope", env=viewer), 3, "exportctl: 404: ")
    no_traceback(
        pipeline.exportctl("copy", "definition", "small-to-good-partner", env=as_(admin, "operator")),
        4,
        "403: role 'operator' may not write",
    )
    no_traceback(pipeline.exportctl("get", "def", env=viewer | {"EXPORT_API_TOKEN": "wrong"}), 4, "exportctl: 401: ")
    no_traceback(pipeline.exportctl("get", "widget", env=viewer), 2, "unknown kind 'widget'")
    no_traceback(
        pipeline.exportctl("db", "current", env=viewer | {"EXPORT_CATALOG_URL": ""}),
        2,
        "'db current' works on the catalog directly, not through the admin API (EXPORT_API_URL)",
    )


@pytest.mark.parametrize("suffix", ["", "/", "/api/v1", "/api/v1/"])
def test_the_api_url_may_name_the_api_prefix(pipeline: Pipeline, admin: AdminServer, suffix: str):
    got = pipeline.exportctl("get", "def", "small-to-good-partner", env=as_(admin, "viewer", admin.url + suffix))
    assert got.returncode == 0, got.stderr
    assert yaml.safe_load(got.stdout)["spec"]["name"] == "small-to-good-partner"


def test_search_sorts_descending_with_a_dash(pipeline: Pipeline, admin: AdminServer):
    for argv in (["--sort", "-name"], ["--sort=-name"]):
        search = pipeline.exportctl("search", "--name-contains", "small", *argv, env=as_(admin, "viewer"))
        assert search.returncode == 0, search.stderr
        names = [line.split()[0] for line in search.stdout.splitlines()[1:-1]]
        assert names == ["small-to-strict-partner", "small-to-good-partner"], search.stdout
        assert "(2 of 2, page 1)" in search.stdout


@pytest.mark.parametrize("kind", ["ExportDefinition", "definition", "definitions", "def", "export-definitions"])
def test_one_set_of_kind_names_through_the_api(pipeline: Pipeline, admin: AdminServer, kind: str):
    viewer = as_(admin, "viewer")
    assert yaml.safe_load(pipeline.exportctl("get", kind, "to-good-partner", env=viewer).stdout)["kind"] == (
        "ExportDefinition"
    )
    assert pipeline.exportctl("describe", kind, "to-good-partner", env=viewer).returncode == 0
    assert "to-good-partner" in pipeline.exportctl("list", kind, env=viewer).stdout
    editor = as_(admin, "editor")
    name = f"copy-{uuid.uuid4().hex[:6]}"
    copied = pipeline.exportctl("copy", kind, "to-good-partner", "--name", name, env=editor)
    assert copied.stdout.strip() == f'ExportDefinition/{name} created ("Copy of to-good-partner")', copied.stderr
    deleted = pipeline.exportctl("delete", kind, name, env=editor)
    assert deleted.stdout.strip() == f"ExportDefinition/{name} deleted", deleted.stderr


def test_what_get_and_describe_print_applies_back_unchanged_through_the_api(
    pipeline: Pipeline, admin: AdminServer, tmp_path: Path
):
    viewer, writer = as_(admin, "viewer"), as_(admin, "admin")  # profiles are written by admins
    for index, argv in enumerate(
        [
            ("get", "def", "small-to-strict-partner", "-o", "yaml"),
            ("get", "templates", "-o", "json"),
            ("get", "query", "first-hundred"),
            ("get", "profile", "strict-partner", "-o", "json"),
            ("describe", "def", "to-good-partner"),
        ]
    ):
        shown = pipeline.exportctl(*argv, env=viewer)
        assert shown.returncode == 0, shown.stderr
        manifest = tmp_path / f"shown-{index}.yaml"
        manifest.write_text(shown.stdout)
        applied = pipeline.exportctl("apply", "-f", str(manifest), env=writer)
        assert applied.returncode == 0, (argv, applied.stderr)
        lines = applied.stdout.splitlines()
        assert lines, argv
        assert all(line.endswith(" unchanged") for line in lines), (argv, applied.stdout)
    described = pipeline.exportctl("describe", "profile", "good-partner", env=viewer)
    assert "token: '**********'" in described.stdout
    assert "e2e-s3cret" not in described.stdout


def test_next_runs_and_dry_run_print_the_same_in_both_modes(pipeline: Pipeline, admin: AdminServer, tmp_path: Path):
    manifest = tmp_path / "parameterised.yaml"
    manifest.write_text(PARAMETERISED)
    applied = pipeline.exportctl("apply", "-f", str(manifest), env=as_(admin, "editor"))
    assert applied.returncode == 0, applied.stderr
    through_api = pipeline.exportctl("next-runs", "first-n-to-good", "-n", "3", env=as_(admin, "viewer"))
    direct = pipeline.exportctl("next-runs", "first-n-to-good", "-n", "3")
    assert through_api.returncode == direct.returncode == 0, through_api.stderr + direct.stderr
    assert through_api.stdout == direct.stdout
    assert through_api.stdout.splitlines()[:2] == [
        "cron '30 2 * * *' (Asia/Kolkata): every day, time 02:30",
        "schedule disabled: it will not fire; the times it would fire:",
    ]
    assert "{" not in through_api.stdout  # a table, not a Python dict
    dry_api = pipeline.exportctl("dry-run", "first-n-to-good", "--requests", "1", env=as_(admin, "operator"))
    dry_direct = pipeline.exportctl("dry-run", "first-n-to-good", "--requests", "1")
    assert dry_api.returncode == dry_direct.returncode == 0, dry_api.stderr + dry_direct.stderr
    assert "--- request 1: 5 member(s)" in dry_api.stdout
    assert dry_api.stdout.splitlines()[:2] == dry_direct.stdout.splitlines()[:2]


def test_a_reused_idempotency_key_with_other_parameters_is_refused_in_both_modes(
    pipeline: Pipeline, admin: AdminServer, tmp_path: Path
):
    manifest = tmp_path / "parameterised.yaml"
    manifest.write_text(PARAMETERISED)
    assert pipeline.exportctl("apply", "-f", str(manifest), env=as_(admin, "editor")).returncode == 0
    for environment in (as_(admin, "operator"), {}):
        key = f"k-{uuid.uuid4().hex}"
        argv = ("run", "first-n-to-good", "--idempotency-key", key)
        first = pipeline.exportctl(*argv, "--param", "max_id=3", env=environment)
        assert first.returncode == 0, first.stderr
        again = pipeline.exportctl(*argv, "--param", "max_id=3", env=environment)
        assert again.stdout == first.stdout, "the same key and request: the same run"
        other = pipeline.exportctl(*argv, "--param", "max_id=4", env=environment)
        no_traceback(other, 4, "exportctl: ")
        assert "idempotency" in other.stderr.lower(), other.stderr  # the reason, not a bare status


def test_flags_and_contexts_choose_the_api_and_its_token(pipeline: Pipeline, admin: AdminServer, tmp_path: Path):
    config = {"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml"), "EXPORT_API_URL": "", "EXPORT_API_TOKEN": ""}
    token_file = tmp_path / "viewer.token"
    token_file.write_text(admin.tokens["viewer"] + "\n")
    made = pipeline.exportctl(
        "config", "set-context", "ops", "--api-url", admin.url, "--token-file", str(token_file), "--use", env=config
    )
    assert made.returncode == 0, made.stderr
    assert pipeline.exportctl("config", "current-context", env=config).stdout == "ops\n"
    contexts = pipeline.exportctl("config", "get-contexts", env=config).stdout.splitlines()
    assert contexts[1].split() == ["*", "ops", admin.url, str(token_file)]
    assert admin.tokens["viewer"] not in pipeline.exportctl("config", "get-contexts", "-o", "yaml", env=config).stdout

    got = pipeline.exportctl("get", "def", "to-good-partner", env=config)  # through the current context
    assert got.returncode == 0, got.stderr
    # Flags before the environment: a wrong EXPORT_API_URL loses to --api-url and --token-file.
    flagged = pipeline.exportctl(
        "list",
        "profiles",
        "--api-url",
        admin.url + "/api/v1",
        "--token-file",
        str(token_file),
        env=config | {"EXPORT_API_URL": "http://127.0.0.1:9"},
    )
    assert flagged.returncode == 0, flagged.stderr
    assert "good-partner" in flagged.stdout
    # The environment before the current context: its URL is used (and unreachable: exit 5).
    no_traceback(
        pipeline.exportctl("get", "def", env=config | {"EXPORT_API_URL": "http://127.0.0.1:9"}),
        5,
        "the admin API at http://127.0.0.1:9 is unreachable",
    )
    # A context's token goes to that context's API only: however its URL is written, never to another host.
    same = pipeline.exportctl("get", "def", "to-good-partner", "--api-url", admin.url + "/api/v1/", env=config)
    assert same.returncode == 0, same.stderr
    elsewhere = pipeline.exportctl("get", "def", "--api-url", admin.url.replace("127.0.0.1", "localhost"), env=config)
    no_traceback(elsewhere, 4, "exportctl: 401: ")
    assert "context ops's token was not sent: --api-url names http://localhost:" in elsewhere.stderr
    no_traceback(pipeline.exportctl("get", "def", "--context", "nope", env=config), 3, "no context 'nope'")
    assert pipeline.exportctl("config", "delete-context", "ops", env=config).returncode == 0
    no_traceback(pipeline.exportctl("config", "current-context", env=config), 3, "no current context")


def test_read_commands_print_json_and_yaml(pipeline: Pipeline, admin: AdminServer):
    viewer = as_(admin, "viewer")
    for argv in (["runs"], ["search"], ["list", "profile"], ["audit"], ["next-runs", "to-good-partner"]):
        as_json = pipeline.exportctl(*argv, "-o", "json", env=viewer)
        assert as_json.returncode == 0, (argv, as_json.stderr)
        json.loads(as_json.stdout)
        as_yaml = pipeline.exportctl(*argv, "-o", "yaml", env=viewer)
        assert as_yaml.returncode == 0, (argv, as_yaml.stderr)
        list(yaml.safe_load_all(as_yaml.stdout))
