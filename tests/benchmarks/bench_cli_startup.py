"""exportctl's start-up: the median wall time (and CPU time) of exportctl commands run to their end, each group
beside its floor measured in the same run, the commands of a group taking turns round by round.

1. Commands that need no broker: ``--help``, ``--version``, and ``runs`` and ``run`` through the admin API (a
   local stub answering at once), beside ``python -c pass``. Goal: 0.3 s or less.
2. ``exportctl run <definition>`` on the catalog directly (a catalog set up with ``exportctl db upgrade`` and
   ``apply``: SQLite, and with ``--catalog postgresql`` or ``both`` a PostgreSQL started here; a real Kafka broker:
   ``--bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``, else a local one started here), from launch to the run's id
   printed, which exportctl prints once Kafka has acknowledged the run request (start-up, catalog, the run
   recorded, the request published and acknowledged), and from launch to exit (the producer and the catalog
   closed, the interpreter's end). Beside its floor: ``python -c 'import kafka'`` and a bare kafka-python producer
   in a process of its own (``KafkaProducer`` as exportctl's is set up, send the same run request to the same
   topic, wait for the acknowledgement, print, close). The ratio says how close ``exportctl run`` is to the floor.
   Goal: well under 0.5 s.

``--before DIR`` times the same exportctl commands from another copy of the project too (``PYTHONPATH=DIR``,
e.g. ``git archive main | tar -x -C DIR``), in the same run: before and after side by side. Bytecode is
written as the commands run (an installed package has it compiled), in this checkout and in DIR.

Figures and ratios only (no pass/fail). Run it with
``python -m tests.benchmarks.bench_cli_startup [--repeat N] [--bootstrap HOST:PORT] [--before DIR]
[--catalog sqlite|postgresql|both]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.events import RunRequested, Trigger, utc_now
from shared.topics import Topics

DEFINITION = "startup"
FLOOR = "python -c pass (floor)"
IMPORT_KAFKA = "python -c 'import kafka'"
BARE = "bare kafka-python produce of the run request (floor)"
#: What ``exportctl run`` needs in the catalog: a definition, its query (never run: ``apply --skip-discovery``),
#: its template and profile.
MANIFEST = f"""\
kind: ConnectionProfile
name: receiver
spec: {{base_url: "http://127.0.0.1:9"}}
---
kind: SavedQuery
name: members
spec: {{sql: "SELECT id, email FROM members", key_column: id}}
---
kind: HttpTemplate
name: startup
spec: {{query: members, profile: receiver, method: POST, path: /members, batch_size: 500,
        json_body: {{members: {{"$each": members, columns: [id, email]}}}}}}
---
kind: ExportDefinition
name: {DEFINITION}
spec: {{query: members, template: startup}}
"""

#: A bare kafka-python producer set up as exportctl's (shared.kafka.clients.make_producer), sending one record.
BARE_PRODUCE = """\
import sys
from kafka import KafkaProducer
bootstrap, topic, key, path = sys.argv[1:]
producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="bench", acks="all", linger_ms=5,
                         compression_type="lz4", max_in_flight_requests_per_connection=1, enable_idempotence=False)
producer.send(topic, key=key.encode(), value=open(path, "rb").read()).get(timeout=60)
print("acknowledged", flush=True)
producer.close()
"""


class _Stub(BaseHTTPRequestHandler):
    """The admin API as far as ``exportctl runs`` and ``run`` need it: an empty run list, a requested run."""

    def do_GET(self) -> None:
        self._answer(200, [])

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, {"run_id": str(uuid.uuid4()), "status": "queued"})

    def _answer(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
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


@dataclass(frozen=True)
class Timing:
    """Medians of a command's runs: wall seconds to its exit, CPU seconds (user + system) of its process, and wall
    seconds to its first line on stdout (``exportctl run``: the run's id, printed once Kafka acknowledged it)."""

    wall: float
    cpu: float
    printed: float | None = None


@dataclass(frozen=True)
class Project:
    """Where exportctl's code comes from: this checkout (``None``), or another one (``--before``)."""

    checkout: str | None = None

    def environment(self, environment: dict[str, str]) -> dict[str, str]:
        """``environment`` importing the project from the checkout, first on ``PYTHONPATH``; bytecode written
        (an installed package has it compiled: a checkout gets it at the warm-up run, not at every run)."""
        own = {key: value for key, value in environment.items() if key != "PYTHONDONTWRITEBYTECODE"}
        return own if self.checkout is None else own | {"PYTHONPATH": self.checkout}

    @property
    def cwd(self) -> str | None:
        """Where to run: ``python -m`` puts the current directory before ``PYTHONPATH``."""
        return self.checkout


@dataclass(frozen=True)
class Command:
    """A command to time: its arguments, environment, and which copy of the project it runs."""

    argv: list[str]
    environment: dict[str, str]
    project: Project = Project()


def timed(commands: dict[str, Command], repeat: int) -> dict[str, Timing]:
    """The medians of running each command to its end ``repeat`` times, after one warm-up round (file cache,
    bytecode and, for ``run``, the topics). The commands take turns round by round, so that a machine busy with
    other work weighs on all of them alike and their ratios hold."""
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    printed: dict[str, list[float]] = {name: [] for name in commands}
    for attempt in range(repeat + 1):
        for name, command in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            first_line = run(command.argv, command.environment, command.project)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if attempt:
                walls[name].append(wall)
                cpus[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                if first_line is not None:
                    printed[name].append(first_line - started)
    return {
        name: Timing(
            statistics.median(walls[name]),
            statistics.median(cpus[name]),
            statistics.median(printed[name]) if len(printed[name]) == repeat else None,
        )
        for name in commands
    }


def run(argv: list[str], environment: dict[str, str], project: Project = Project()) -> float | None:
    """Run ``argv`` to its end with ``project``'s code; when it wrote its first line on stdout (``perf_counter``),
    None if it wrote none. :class:`RuntimeError` with its stderr if it fails."""
    # stderr to a file, not a pipe: read after stdout's end, a full pipe would hold the command up.
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(
            argv, env=project.environment(environment), cwd=project.cwd, stdout=subprocess.PIPE, stderr=errors
        ) as process:
            assert process.stdout is not None
            first_line = time.perf_counter() if process.stdout.readline() else None
            process.stdout.read()  # the rest (--help's), to the end of the output
            returncode = process.wait()
        if returncode:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(argv[:4])} failed ({returncode}): {errors.read().decode().strip()}")
    return first_line


def line(name: str, timing: Timing, floor: Timing, note: str = "") -> str:
    ratio = timing.wall / floor.wall
    return f"  {name:<52} {timing.wall * 1000:7.1f} ms  (CPU {timing.cpu * 1000:6.1f} ms)  {ratio:5.1f}x" + (
        f"  {note}" if note else ""
    )


def acknowledged_line(name: str, timing: Timing, floor: Timing, note: str = "") -> str:
    """``name``'s launch -> acknowledged (its first line printed) and launch -> exit, each with its ratio to
    ``floor``'s."""
    assert timing.printed is not None
    assert floor.printed is not None
    return (
        f"  {name:<52} acknowledged {timing.printed * 1000:6.1f} ms ({timing.printed / floor.printed:4.1f}x)  "
        f"exit {timing.wall * 1000:6.1f} ms ({timing.wall / floor.wall:4.1f}x)  CPU {timing.cpu * 1000:6.1f} ms"
    ) + (f"  {note}" if note else "")


@contextmanager
def kafka_bootstrap(given: str | None) -> Iterator[str]:
    """A broker's bootstrap servers: ``given``, ``KAFKA_BOOTSTRAP_SERVERS``, or a local broker for the run."""
    if given or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield given or os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    from devtools.kafka_broker import LocalKafka

    with LocalKafka() as broker:
        yield broker.bootstrap_servers


@contextmanager
def catalog_urls(kind: str, work_dir: Path) -> Iterator[dict[str, str]]:
    """The catalogs to time ``exportctl run`` on, by dialect: SQLite in ``work_dir``, PostgreSQL started here."""
    urls = {"SQLite": f"sqlite:///{work_dir / 'catalog.db'}"} if kind in ("sqlite", "both") else {}
    if kind == "sqlite":
        yield urls
        return
    from devtools.postgres import LocalPostgres

    with LocalPostgres() as server:
        yield urls | {"PostgreSQL": server.create_database("bench_cli_startup")}


def direct_environment(work_dir: Path, bootstrap: str, catalog_url: str) -> dict[str, str]:
    """exportctl on the catalog at ``catalog_url`` and the broker at ``bootstrap`` (no admin API)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("EXPORT_API_URL", "EXPORT_API_TOKEN")}
    return environment | {
        "EXPORT_CATALOG_URL": catalog_url,
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EXPORT_TOPIC_PREFIX": f"startup{uuid.uuid4().hex[:8]}.",
        "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
        "EXPORTCTL_CONFIG": str(work_dir / "no-config.yaml"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="rounds, each running every command (default: 15)")
    parser.add_argument(
        "--bootstrap", help="a Kafka broker to use (default: KAFKA_BOOTSTRAP_SERVERS, else one started)"
    )
    parser.add_argument("--before", metavar="DIR", help="also time exportctl from this checkout (e.g. main's)")
    parser.add_argument(
        "--catalog",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="the catalog of `exportctl run` on the catalog directly (default: sqlite; postgresql starts one)",
    )
    options = parser.parse_args()
    # `python -m shared.cli` rather than the installed script: the script of an editable install imports the
    # checkout it was installed from, whatever PYTHONPATH says; the module follows PYTHONPATH (--before).
    exportctl = [sys.executable, "-m", "shared.cli"]
    projects = {"": Project()} | ({" (before)": Project(options.before)} if options.before else {})
    with ExitStack() as stack:
        url = stack.enter_context(stub_api())
        api = {**os.environ, "EXPORT_API_URL": url, "EXPORT_API_TOKEN": "bench", "EXPORTCTL_CONFIG": os.devnull}
        cases = {
            "exportctl --help": ["--help"],
            "exportctl --version": ["--version"],
            "exportctl runs (through the API)": ["runs"],
            f"exportctl run {DEFINITION} (through the API)": ["run", DEFINITION],
        }
        quick = timed(
            {FLOOR: Command([sys.executable, "-c", "pass"], api)}
            | {
                name + suffix: Command([*exportctl, *argv], api, project)
                for name, argv in cases.items()
                for suffix, project in projects.items()
            },
            options.repeat,
        )

        bootstrap = stack.enter_context(kafka_bootstrap(options.bootstrap))
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cli-")))
        urls = stack.enter_context(catalog_urls(options.catalog, work_dir))
        publishing = {
            dialect: time_direct_run(
                exportctl, projects, work_dir, direct_environment(work_dir, bootstrap, url), options
            )
            for dialect, url in urls.items()
        }

    print(
        f"exportctl start-up, median of {options.repeat} rounds, wall (and CPU: user + system) ({' '.join(exportctl)})"
    )
    print(" without a broker, beside python -c pass:")
    for name, timing in quick.items():
        print(line(name, timing, quick[FLOOR], "" if name == FLOOR else "(goal: <= 300 ms)"))
    for dialect, timings in publishing.items():
        print(f" exportctl run on the catalog directly ({dialect}) and Kafka at {bootstrap}, beside its floor:")
        for name, timing in timings.items():
            goal = "" if name in (IMPORT_KAFKA, BARE) else "(goal: well under 500 ms)"
            print(line(name, timing, timings[BARE], goal))
        print("  launch -> the run request acknowledged (first line printed: the run's id) and -> exit:")
        for name, timing in timings.items():
            if name != IMPORT_KAFKA:
                print(acknowledged_line(name, timing, timings[BARE]))


def time_direct_run(
    exportctl: list[str],
    projects: dict[str, Project],
    work_dir: Path,
    direct: dict[str, str],
    options: argparse.Namespace,
) -> dict[str, Timing]:
    """``exportctl run`` on the catalog ``direct`` names (set up here), each of ``projects`` taking turns with the
    floor: ``python -c 'import kafka'`` and the bare producer."""
    manifest = work_dir / "manifest.yaml"
    manifest.write_text(MANIFEST)
    for argv in (["db", "upgrade"], ["apply", "--skip-discovery", "-f", str(manifest)]):
        run([*exportctl, *argv], direct)
    topic = Topics(prefix=direct["EXPORT_TOPIC_PREFIX"]).run_requests
    request = RunRequested(definition=DEFINITION, trigger=Trigger.MANUAL, requested_by="bench", requested_at=utc_now())
    (work_dir / "event.json").write_bytes(request.to_bytes())
    bootstrap = direct["EXPORT_KAFKA_BOOTSTRAP_SERVERS"]
    bare = [sys.executable, "-c", BARE_PRODUCE, bootstrap, topic, str(request.run_id), str(work_dir / "event.json")]
    # exportctl's first run creates the topics as the services do (partitions, configs); the bare producer's
    # warm-up would otherwise have the broker create its topic with the broker's defaults.
    run([*exportctl, "run", DEFINITION], direct)
    return timed(
        {
            IMPORT_KAFKA: Command([sys.executable, "-c", "import kafka"], direct),
            BARE: Command(bare, direct),
        }
        | {
            f"exportctl run {DEFINITION}{suffix}": Command([*exportctl, "run", DEFINITION], direct, project)
            for suffix, project in projects.items()
        },
        options.repeat,
    )


if __name__ == "__main__":
    main()
