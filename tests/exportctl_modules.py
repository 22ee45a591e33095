"""What an exportctl command loads, read from a fresh interpreter: its start-up held without timing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

#: Runs exportctl's main with the arguments after the first, writes its exit code and the modules loaded by
#: then to the first (a JSON file), and exits with that code.
RECORDING = (
    "import json, sys\n"
    "from shared.cli.__main__ import main\n"
    "code = main(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    json.dump({'code': code, 'modules': sorted(sys.modules)}, out)\n"
    "sys.exit(code)\n"
)


def run_recording(
    record: Path, argv: Iterable[str], environment: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], int, set[str]]:
    """Run exportctl with ``argv`` in a fresh interpreter; its process, its exit code and the modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", RECORDING, str(record), *argv],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert record.exists(), done.stderr
    result = json.loads(record.read_text())
    return done, int(result["code"]), set(result["modules"])


def among(modules: Iterable[str], packages: Iterable[str]) -> list[str]:
    """The ``modules`` that are one of ``packages`` or inside one, sorted."""
    names = tuple(packages)
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in names))
