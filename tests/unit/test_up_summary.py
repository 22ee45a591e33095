"""``make up`` prints the lines to paste for exportctl: through the admin API (URL and a token) or on the catalog
directly (the stack's catalog, member store, Kafka, topic prefix and allowed destinations), and the receiver's URL
for ``--var RECEIVER_URL``. Before, the Kafka address and the topic prefix were only in the stack's logs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from devtools.up import ROLES, ConsoleStack, summary


def _stack(tmp_path: Path) -> ConsoleStack:
    stack = ConsoleStack(tmp_path / "up", port=8080)
    stack.tokens = {role: f"demo-{role}-x_y-Z" for role in ROLES}
    stack.env = {
        "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'up' / 'catalog.db'}",
        "EXPORT_QUERY_STORE_URL": f"sqlite:///{tmp_path / 'up' / 'members.db'}",
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:55251",
        "EXPORT_TOPIC_PREFIX": "up17966434070d22.",
        "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
    }
    stack.receiver = cast(Any, SimpleNamespace(url="http://127.0.0.1:41234"))
    stack.sink = cast(Any, SimpleNamespace(port=2525))
    return stack


def _pasted(lines: list[str]) -> dict[str, str]:
    """The environment a shell has after the summary's ``export`` lines are pasted into it."""
    exports = "\n".join(line.strip() for line in lines if line.strip().startswith("export "))
    shell = subprocess.run(["bash", "-c", f"{exports}\nenv -0"], env={}, capture_output=True, text=True, check=True)
    pairs = (entry.split("=", 1) for entry in shell.stdout.split("\0") if "=" in entry)
    return {name: value for name, value in pairs if name.startswith("EXPORT_")}


def test_make_up_prints_the_lines_to_paste_for_exportctl_in_both_modes(tmp_path: Path):
    stack = _stack(tmp_path)
    lines = summary(stack, tmp_path / "up")
    pasted = _pasted(lines)
    assert pasted["EXPORT_API_URL"] == "http://127.0.0.1:8080"
    assert pasted["EXPORT_API_TOKEN"] == stack.tokens["admin"]
    for name, value in stack.env.items():
        assert pasted[name] == value, name
    # The API line and the direct lines are separate: pasting only the direct ones leaves exportctl in direct mode.
    direct = [line for line in lines if line.strip().startswith("export ") and "EXPORT_API_URL" not in line]
    assert "EXPORT_API_URL" not in _pasted(direct)
    assert any("--var RECEIVER_URL=http://127.0.0.1:41234" in line for line in lines)
