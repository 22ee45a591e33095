"""Logging configured more than once in one process (exportctl run in-process again, a test capturing logs)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: configure_logging replaces the root handlers and caches loggers.
_SCRIPT = """
import json
import structlog
from structlog.testing import capture_logs
from shared.log import configure_logging

log = structlog.get_logger("t")
configure_logging("INFO", "json", service="first")
log.info("first call")  # the logger is cached with what the first call configured
configure_logging("INFO", "json", service="second")
with capture_logs() as captured:
    log.info("after the second call")
print(json.dumps([entry["event"] for entry in captured]))
"""


def test_a_logger_used_before_logging_is_configured_again_follows_the_new_configuration():
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == ["after the second call"]
