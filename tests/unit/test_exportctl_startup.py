"""exportctl's start-up, held without timing: what a command loads is what a user waits for, so the commands
that need neither the catalog nor Kafka (``--help``, everything through the admin API) load none of the
heavy libraries. Read from a fresh interpreter's ``sys.modules`` after the command ran (tests/e2e holds
``exportctl run`` on the catalog directly the same way)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.exportctl_modules import among, run_recording

#: What none of these commands needs: the catalog's and Kafka's clients, the models, templates, SQL parsing,
#: logging and tracing, the admin API's framework, YAML (no config file here).
HEAVY = (
    "sqlalchemy",
    "alembic",
    "kafka",
    "pydantic",
    "httpx",
    "aiohttp",
    "fastapi",
    "starlette",
    "numpy",
    "jinja2",
    "sqlglot",
    "structlog",
    "opentelemetry",
    "rich",
    "yaml",
    "cryptography",
    "shared.catalog",
    "shared.kafka",
    "shared.domain",
    "shared.application",
    "shared.settings",
)


def loaded_by(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    """exportctl's exit code with ``argv`` in a fresh interpreter, and the modules it loaded."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_")}
    environment |= {"EXPORTCTL_CONFIG": str(tmp_path / "no-config.yaml"), **(env or {})}
    _, code, modules = run_recording(tmp_path / "modules.json", argv, environment)
    return code, modules


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    code, modules = loaded_by(tmp_path, "--help")
    assert code == 0
    assert among(modules, HEAVY) == []


@pytest.mark.parametrize("argv", [["run", "nightly"], ["run", "nightly", "--wait"], ["runs"], ["get", "definitions"]])
def test_commands_through_the_admin_api_load_no_heavy_library(tmp_path: Path, argv: list[str]) -> None:
    with socket.socket() as unused:  # an API that refuses connections (bound, not listening)
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
        code, modules = loaded_by(tmp_path, *argv, env={"EXPORT_API_URL": url})
    assert code == 5  # unreachable: the command was built and its call tried
    assert among(modules, HEAVY) == []


#: What requesting a run on the catalog directly does not need, though the catalog's write path does: the object
#: checks and the template renderer behind them (Jinja, XML), which only writing a template runs.
NOT_FOR_A_RUN_REQUEST = (
    "jinja2",
    "markupsafe",
    "xml",
    "shared.application.checks",
    "shared.domain.rendering",
    "shared.domain.json_structure",
    "shared.domain.template_sandbox",
)


def test_requesting_a_run_on_the_catalog_loads_neither_the_checks_nor_the_renderer(tmp_path: Path) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "kind: SavedQuery\nname: q\nspec: {sql: 'SELECT id FROM members', key_column: id}\n---\n"
        "kind: ConnectionProfile\nname: p\nspec: {base_url: 'http://127.0.0.1:9'}\n---\n"
        "kind: HttpTemplate\nname: t\n"
        "spec: {query: q, profile: p, json_body: {ids: {$each: members, columns: [id]}}}\n---\n"
        "kind: ExportDefinition\nname: nightly\nspec: {query: q, template: t}\n"
    )
    catalog = {"EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}", "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1"}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_")}
    environment |= {"EXPORTCTL_CONFIG": str(tmp_path / "no-config.yaml"), **catalog}
    for setup in (["db", "upgrade"], ["apply", "--skip-discovery", "-f", str(manifest)]):
        subprocess.run([sys.executable, "-m", "shared.cli", *setup], env=environment, check=True, capture_output=True)
    with socket.socket() as unused:  # a broker that refuses connections: the run is requested, then not published
        unused.bind(("127.0.0.1", 0))
        kafka = {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{unused.getsockname()[1]}"}
        code, modules = loaded_by(tmp_path, "run", "nightly", env={**catalog, **kafka})
    assert code == 5  # Kafka unreachable: the definition and its query were read, the run recorded
    assert "shared.catalog.runs_store" in modules
    assert "shared.domain.query_sql" in modules
    assert among(modules, NOT_FOR_A_RUN_REQUEST) == []


def test_a_command_in_process_leaves_the_garbage_collector_as_it_found_it() -> None:
    import gc

    from shared.cli.__main__ import main

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert main(["--version"]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # nothing of the caller's left out of its collections


#: exportctl as its script runs it (``main()`` on the process's arguments), each garbage collection's statistics
#: on stderr (``gc.DEBUG_STATS``), the interpreter's own at exit too.
COLLECTIONS_REPORTED = (
    "import gc, sys\ngc.set_debug(gc.DEBUG_STATS)\nfrom shared.cli.__main__ import main\nsys.exit(main())\n"
)


def test_the_exportctl_process_ends_without_collecting_what_its_command_loaded(tmp_path: Path) -> None:
    # `exportctl runs` on the catalog directly loads the catalog's libraries: about 180,000 objects that live to
    # the end. Collected once as young objects when the collector came back on, then three times by the
    # interpreter at exit, they cost `exportctl run` about 220 ms; left to the process's end, no collection
    # traverses them.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_")}
    environment |= {
        "EXPORTCTL_CONFIG": str(tmp_path / "no-config.yaml"),
        "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
    }
    exportctl = [sys.executable, "-m", "shared.cli"]
    subprocess.run([*exportctl, "db", "upgrade"], env=environment, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", COLLECTIONS_REPORTED, "runs"], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("RUN")  # the command ran: an empty list of runs, under its header
    examined = [
        sum(int(count) for count in line.rsplit(":", 1)[1].split())
        for line in done.stderr.splitlines()
        if line.startswith("gc: objects in each generation:")
    ]
    assert examined  # the interpreter's collections at exit are reported
    assert max(examined) < 20_000, examined


def test_following_a_run_turns_the_garbage_collector_back_on() -> None:
    import gc

    from shared.cli.collector import paused
    from shared.cli.progress import follow

    final = {
        "run_id": "run-1",
        "definition": "nightly",
        "status": "succeeded",
        "extracted": 0,
        "extraction_complete": True,
        "delivered": 0,
        "failed": 0,
        "duration_seconds": 1.0,
    }
    with paused():
        assert not gc.isenabled()
        follow(lambda: dict(final), "run-1", timeout=5, poll_seconds=0.01)
        assert gc.isenabled()
