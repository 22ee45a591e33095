"""exportctl's start-up, held without timing: what a command loads is what a user waits for, so the commands
that need neither the catalog nor Kafka (``--help``, everything through the admin API) load none of the
heavy libraries. Read from a fresh interpreter's ``sys.modules`` after the command ran (tests/e2e holds
``exportctl run`` on the catalog directly the same way)."""

from __future__ import annotations

import os
import socket
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
