"""exportctl's start-up: the median wall time of ``--help``, ``--version`` and one command through the admin
API (``runs``, against a local stub answering at once), beside ``python -c pass`` measured in the same run.

Figures and ratios only (no pass/fail): the README's goal is 0.3 s or less for these. Run it with
``python -m tests.benchmarks.bench_cli_startup [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Stub(BaseHTTPRequestHandler):
    """The admin API as far as ``exportctl runs`` needs it: an empty run list."""

    def do_GET(self) -> None:
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet: the benchmark prints its own figures."""


@contextmanager
def stub_api() -> Iterator[str]:
    """A stub admin API on 127.0.0.1; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def median_seconds(argv: list[str], environment: dict[str, str], repeat: int) -> float:
    """The median wall time of running ``argv`` to its end, ``repeat`` times (after one warm-up run)."""
    times = []
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        subprocess.run(argv, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if attempt:  # the first run warms the file cache
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command (default: 15)")
    options = parser.parse_args()
    installed = shutil.which("exportctl", path=os.path.dirname(sys.executable))
    exportctl = [installed] if installed else [sys.executable, "-m", "shared.cli"]
    with stub_api() as url:
        environment = {**os.environ, "EXPORT_API_URL": url, "EXPORT_API_TOKEN": "bench", "EXPORTCTL_CONFIG": os.devnull}
        baseline = median_seconds([sys.executable, "-c", "pass"], environment, options.repeat)
        cases = {
            "exportctl --help": [*exportctl, "--help"],
            "exportctl --version": [*exportctl, "--version"],
            "exportctl runs (through the API)": [*exportctl, "runs"],
        }
        figures = {name: median_seconds(argv, environment, options.repeat) for name, argv in cases.items()}
    print(f"exportctl start-up, median of {options.repeat} runs ({' '.join(exportctl)})")
    print(f"  {'python -c pass (baseline)':<36} {baseline * 1000:7.1f} ms   1.0x")
    for name, seconds in figures.items():
        print(f"  {name:<36} {seconds * 1000:7.1f} ms  {seconds / baseline:4.1f}x  (goal: <= 300 ms)")


if __name__ == "__main__":
    main()
