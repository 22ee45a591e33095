"""exportctl on the catalog directly, as a user runs it: exit codes, messages, formats (the CLI reference)."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import BearerAuth, ConnectionProfile
from shared.kafka import read_whole_topic
from shared.querystore.demo_data import create_demo_members
from tests.exportctl_modules import among, run_recording

pytestmark = pytest.mark.e2e


def _direct(tmp_path) -> dict[str, str]:
    """exportctl on the catalog of ``tmp_path`` directly."""
    return {
        "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "EXPORT_QUERY_STORE_URL": f"sqlite:///{tmp_path / 'no-members.db'}",
        "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
        "EXPORTCTL_CONFIG": str(tmp_path / "no-config.yaml"),  # never the user's contexts
    }


def exportctl(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **_direct(tmp_path), **(env or {})}
    # An empty member store (queries such as 'select 1 as id' need no table): exportctl refuses one that does not exist.
    (tmp_path / "no-members.db").touch()
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
    assert result.returncode == 4
    assert (
        f"{manifest}: document 1 (ExportDefinition 'nightly'): field 'schedule.cron': "
        "Value error, '99 * * * *' is not a valid CRON expression"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_refuses_references_to_objects_that_do_not_exist(tmp_path):
    manifest = tmp_path / "dangling.yaml"
    manifest.write_text("kind: ExportDefinition\nname: nightly\nspec: {query: gold, template: partner}\n")
    result = exportctl(tmp_path, "apply", "-f", str(manifest))
    assert result.returncode == 4
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
    # What get printed (the token masked) applies back unchanged, and the stored token is kept, not masked.
    (tmp_path / "shown.yaml").write_text(shown)
    assert exportctl(tmp_path, "apply", "-f", str(tmp_path / "shown.yaml")).stdout == (
        "ConnectionProfile/partner unchanged\n"
    )
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        profile = catalog.definitions.get(ConnectionProfile, "partner")
    finally:
        catalog.close()
    assert isinstance(profile.auth, BearerAuth)
    assert profile.auth.token.get_secret_value() == "very-secret-token"


def test_run_of_an_unknown_definition_is_refused_before_anything_is_published(tmp_path):
    result = exportctl(tmp_path, "run", "nope")
    assert result.returncode == 3
    assert "ExportDefinition 'nope' does not exist" in result.stderr


#: What requesting a run does not need, and its start-up would pay for: the admin API's framework, HTTP
#: clients, migrations, change snapshots (numpy), manifests (YAML), the consumer loop (metrics, retries), the
#: member store, PostgreSQL's driver (this catalog is SQLite), the object commands, the progress bar (no --wait),
#: the object checks and the template renderer (Jinja, XML) that only writing objects runs.
NOT_FOR_RUN = (
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "aiohttp",
    "alembic",
    "mako",
    "numpy",
    "yaml",
    "prometheus_client",
    "tenacity",
    "psycopg",
    "shared.kafka.loop",
    "shared.querystore",
    "shared.catalog.change_snapshots",
    "shared.application.dry_run",
    "shared.cli.manifests",
    "shared.cli.direct_commands",
    "rich.progress",
    "jinja2",
    "xml",
    "shared.application.checks",
    "shared.domain.rendering",
)


def test_run_publishes_its_request_loading_only_what_requesting_a_run_needs(tmp_path, settings):
    # What a user waits for when starting a run is mostly what exportctl loads: held here without timing.
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: q\nspec: {sql: 'SELECT id FROM members', key_column: id}\n---\n"
        "kind: ConnectionProfile\nname: p\nspec: {base_url: 'http://127.0.0.1:9'}\n---\n"
        "kind: HttpTemplate\nname: t\nspec: {query: q, profile: p}\n---\n"
        "kind: ExportDefinition\nname: nightly\nspec: {query: q, template: t}\n"
    )
    kafka = {
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "EXPORT_TOPIC_PREFIX": settings.topic_prefix,
        "EXPORT_TOPIC_PARTITIONS": str(settings.topic_partitions),
    }
    assert exportctl(tmp_path, "apply", "--skip-discovery", "-f", str(manifest)).returncode == 0
    result, code, modules = run_recording(
        tmp_path / "modules.json", ["run", "nightly"], {**os.environ, **_direct(tmp_path), **kafka}
    )
    assert code == 0, result.stderr
    run_id = result.stdout.split()[1]
    assert result.stdout == f"run {run_id} requested for 'nightly'\n"
    published = [json.loads(value) for value in read_whole_topic(settings, settings.topics.run_requests)]
    assert [(request["run_id"], request["definition"]) for request in published] == [(run_id, "nightly")]
    assert among(modules, NOT_FOR_RUN) == []


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
    assert lines[0] == "cron '30 2 * * *' (Asia/Kolkata): every day, time 02:30"
    assert lines[1].split() == ["LOCAL", "TIME", "UTC"]
    assert len(lines) == 5
    assert all(line.endswith("21:00 UTC") and " 02:30 IST " in line for line in lines[2:])
    as_json = json.loads(exportctl(tmp_path, "next-runs", "nightly", "-n", "2", "-o", "json").stdout)
    assert as_json["shape"] == {"every": "day", "time": "02:30"}
    assert [t[11:] for t in as_json["fire_times"]] == ["21:00:00Z"] * 2  # as the API writes them


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
    assert result.returncode == 4
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
    assert result.returncode == 4
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
    assert result.returncode == 4
    assert "parameter 'min_points': expected integer" in result.stderr


def test_apply_refuses_a_profile_pointing_at_a_private_or_metadata_address(tmp_path):
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        "kind: ConnectionProfile\nname: metadata\nspec: {base_url: 'http://169.254.169.254/latest'}\n---\n"
        "kind: ConnectionProfile\nname: intranet\nspec: {base_url: 'http://10.1.2.3'}\n"
    )
    result = exportctl(tmp_path, "apply", "-f", str(manifest), env={"EXPORT_ALLOWED_DESTINATIONS": ""})
    assert result.returncode == 4
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
    assert result.returncode == 4
    assert (
        "HttpTemplate 'unquoted': field 'body': template body renders invalid JSON at line 2, column" in result.stderr
    )
    assert (
        "HttpTemplate 'unknown-column': field 'query': template 'unknown-column' uses column(s) nickname "
        "that query 'few' does not return"
    ) in result.stderr


# --- the CLI reference: errors without tracebacks, exit codes, kinds, formats, variables -------------

SET = """
kind: SavedQuery
name: q
spec: {sql: 'select 1 as id'}
---
kind: ConnectionProfile
name: p
spec: {base_url: '${PARTNER_URL}'}
---
kind: HttpTemplate
name: t
spec: {query: q, profile: p, path: /v1/members}
---
kind: ExportDefinition
name: nightly
spec:
  query: q
  template: t
  schedule: {enabled: true, timezone: Europe/Paris, cron: '0 3 * * *'}
"""


def _applied(tmp_path) -> None:
    manifest = tmp_path / "set.yaml"
    manifest.write_text(SET)
    result = exportctl(tmp_path, "apply", "-f", str(manifest), "--var", "PARTNER_URL=https://api.example.com")
    assert result.returncode == 0, result.stderr


def _at_once(tmp_path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """exportctl run with each of ``commands`` concurrently (on a catalog that exists already); in their order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda argv: exportctl(tmp_path, *argv), commands))


def _refused(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_manifest_variables_come_from_var_or_the_environment_and_an_unset_one_is_named(tmp_path):
    manifest = tmp_path / "set.yaml"
    manifest.write_text(SET)
    _refused(
        exportctl(tmp_path, "apply", "-f", str(manifest)),
        4,
        f"{manifest}: variable(s) PARTNER_URL not set: give --var NAME=VALUE or set them in the environment",
    )
    from_env = exportctl(tmp_path, "apply", "-f", str(manifest), "--diff", env={"PARTNER_URL": "https://a.example"})
    assert from_env.returncode == 0, from_env.stderr
    assert "ConnectionProfile/p would be created" in from_env.stdout
    _refused(
        exportctl(tmp_path, "apply", "-f", str(manifest), "--var", "PARTNER_URL=a", "--var", "PARTNER_URL=b"),
        2,
        "--var PARTNER_URL is given twice",
    )
    applied = exportctl(tmp_path, "apply", "-f", str(manifest), "--var", "PARTNER_URL=https://b.example")
    assert applied.returncode == 0, applied.stderr
    shown = yaml.safe_load(exportctl(tmp_path, "get", "profile", "p").stdout)
    assert shown["spec"]["base_url"] == "https://b.example"


def test_the_demo_manifest_applies_with_its_receiver_url_given(tmp_path):
    demo = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo" / "demo-export.yaml"
    unset = exportctl(tmp_path, "apply", "-f", str(demo), "--skip-discovery")
    _refused(unset, 4, "variable(s) RECEIVER_URL not set")
    given = exportctl(
        tmp_path,
        "apply",
        "-f",
        str(demo),
        "--skip-discovery",
        "--diff",
        "--var",
        "RECEIVER_URL=http://127.0.0.1:9",
    )
    assert given.returncode == 0, given.stderr
    assert "ConnectionProfile/" in given.stdout


@pytest.mark.parametrize("kind", ["ExportDefinition", "definition", "definitions", "def", "export-definitions"])
def test_one_set_of_kind_names_in_every_command(tmp_path, kind):
    _applied(tmp_path)
    # The commands that do not depend on each other run at once (each is an interpreter's start-up, mostly).
    got, described, listed, copied, unknown = _at_once(
        tmp_path,
        ("get", kind, "nightly"),
        ("describe", kind, "nightly"),
        ("list", kind),
        ("copy", kind, "nightly", "--name", "nightly-copy"),
        ("get", "widgets"),
    )
    assert got.returncode == 0, got.stderr
    assert yaml.safe_load(got.stdout)["kind"] == "ExportDefinition"
    assert described.returncode == 0
    assert "nightly" in listed.stdout
    assert copied.stdout.strip() == 'ExportDefinition/nightly-copy created ("Copy of nightly")', copied.stderr
    deleted = exportctl(tmp_path, "delete", kind, "nightly-copy")
    assert deleted.stdout.strip() == "ExportDefinition/nightly-copy deleted", deleted.stderr
    _refused(unknown, 2, "unknown kind 'widgets'")


def test_what_get_and_describe_print_applies_back_unchanged(tmp_path):
    _applied(tmp_path)
    for index, argv in enumerate(
        [
            ("get", "definition", "-o", "yaml"),
            ("get", "template", "-o", "json"),
            ("get", "query"),
            ("describe", "def", "nightly"),
            ("describe", "profile", "p", "-o", "json"),
        ]
    ):
        shown = exportctl(tmp_path, *argv)
        assert shown.returncode == 0, shown.stderr
        manifest = tmp_path / f"shown-{index}.yaml"
        manifest.write_text(shown.stdout)
        applied = exportctl(tmp_path, "apply", "-f", str(manifest))
        assert applied.returncode == 0, (argv, applied.stderr)
        assert applied.stdout.splitlines()
        assert all(line.endswith(" unchanged") for line in applied.stdout.splitlines())
    described = exportctl(tmp_path, "describe", "def", "nightly").stdout
    assert "# schedule: cron '0 3 * * *' (Europe/Paris), next: " in described


def test_bad_input_is_a_message_and_an_exit_code_never_a_traceback(tmp_path):
    _applied(tmp_path)
    _refused(exportctl(tmp_path, "runs", "--id", "nope"), 2, "'nope' is not a run id")
    _refused(exportctl(tmp_path, "runs", "--id", str(uuid.uuid4())), 3, "does not exist")
    _refused(exportctl(tmp_path, "apply", "-f", "/nonexistent.yaml"), 4, "/nonexistent.yaml: cannot be read")
    _refused(exportctl(tmp_path, "demo-data", "--members", "-5"), 2, "must be at least 1, not -5")
    _refused(exportctl(tmp_path, "run", "nightly", "--param", "a=1", "--param", "a=2"), 2, "--param a is given twice")
    _refused(exportctl(tmp_path, "run", "nightly", "--wait", "--timeout", "0"), 2, "must be a finite number above 0")
    _refused(exportctl(tmp_path, "describe", "def", "nope"), 3, "ExportDefinition 'nope' does not exist")
    _refused(exportctl(tmp_path, "search"), 2, "'search' works through the admin API")
    _refused(exportctl(tmp_path, "delete", "query", "q"), 4, "")  # in use by the template


def test_a_closed_pipe_ends_quietly(tmp_path):
    environment = {**os.environ, "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    with subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "schemas"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(10)  # like `| head`: read a little, then go away
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(60) == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr


def test_dead_letters_without_a_reachable_kafka_fail_fast(tmp_path):
    with socket.socket() as unused:  # a port nobody listens on (bound, not listening)
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        started = time.monotonic()
        result = exportctl(
            tmp_path, "dead-letters", "list", env={"EXPORT_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        )
        elapsed = time.monotonic() - started
    _refused(result, 5, f"Kafka is unreachable (127.0.0.1:{port}: Connection refused)")
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_without_a_catalog_nothing_is_created_and_the_message_says_what_to_set(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_")}
    environment["EXPORTCTL_CONFIG"] = str(tmp_path / "no-config.yaml")
    for argv in (["get", "def"], ["runs"], ["next-runs", "x"]):
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", *argv],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        _refused(result, 2, "no catalog at sqlite:///.local/catalog.db: set EXPORT_API_URL")
    api_only = environment | {"EXPORT_API_URL": "http://127.0.0.1:9/api/v1"}
    for argv, command in ((["db", "current"], "db current"), (["secrets", "rotate"], "")):
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", *argv],
            env=api_only,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        _refused(result, 2, f"'{command or 'secrets rotate'}' works on the catalog directly")
    unreachable = subprocess.run(
        [sys.executable, "-m", "shared.cli", "get", "def"],
        env=api_only,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    _refused(unreachable, 5, "the admin API at http://127.0.0.1:9 is unreachable")
    assert not (tmp_path / ".local").exists()


def test_version_and_completion_need_nothing(tmp_path):
    from importlib.metadata import version

    shown = exportctl(tmp_path, "--version")
    assert shown.returncode == 0
    assert shown.stdout == f"exportctl {version('member-export')}\n"
    bash = exportctl(tmp_path, "completion", "bash")
    assert bash.returncode == 0, bash.stderr
    assert subprocess.run(["bash", "-n"], input=bash.stdout, text=True, check=False).returncode == 0
    zsh = exportctl(tmp_path, "completion", "zsh")
    assert zsh.stdout.startswith("#compdef exportctl")
