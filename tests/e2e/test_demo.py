"""The README's first command, ``make demo``, does what the README says: a real export end to end, then it stops.

``make demo`` is ``python -m devtools.demo`` once the prerequisites are installed; here it runs with fewer members
and on the suite's broker (``EXPORT_KAFKA_BOOTSTRAP_SERVERS``, which the demo honours instead of starting its own),
so the test costs the four services' start and one small run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 300

pytestmark = pytest.mark.e2e


def test_make_demo_exports_every_member_and_emails_the_outcome(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    demo = subprocess.run(
        [sys.executable, "-m", "devtools.demo", "--members", str(MEMBERS), "--dir", str(tmp_path / "demo")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "==> demo succeeded" in demo.stdout, output
    assert re.search(r"status:\s+succeeded", demo.stdout), output
    assert re.search(rf"delivered:\s+{MEMBERS}\b", demo.stdout), output
    assert re.search(rf"receiver got:\s+{MEMBERS} distinct members", demo.stdout), output
    assert re.search(r"email:\s+'.+' to ", demo.stdout), output
    # It says what it stops: the suite's broker was given, so not Kafka (it was neither started nor stopped).
    assert "==> stopping services, receiver, SMTP sink\n" in demo.stdout, output
    # "then everything stops": no process it started (they all carry its directory in their environment) is left.
    assert _processes_mentioning(str(tmp_path / "demo")) == [], output


def _processes_mentioning(text: str) -> list[int]:
    """The pids of this user's processes whose environment holds ``text``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if text.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found
