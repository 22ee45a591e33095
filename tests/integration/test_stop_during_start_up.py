"""SIGTERM while a service is still starting stops it at once, with status 0, as it would once running.

Kubernetes sends SIGTERM to pods still starting (a rollout replacing them, a node drained). Before, a service
only handled the signal from its loop on (the admin API: from uvicorn's serving on), so one that came during
start-up ended it with status 143 (-15 here), read as a crash. Each service runs as a real process on real Kafka;
it is frozen (SIGSTOP) the moment it says it is starting (it has begun catching SIGTERM: the first thing its
start-up does), given SIGTERM while frozen, and let go: the signal comes at a known point of start-up.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.kafka_broker import LocalKafka
from devtools.pipeline import LocalPipeline
from devtools.processes import free_port, wait_until
from services.admin.bearer_tokens import token_hash
from shared.catalog import CatalogStores, make_engine
from shared.kafka.clients import PRODUCER_CLOSE_SECONDS
from shared.querystore.demo_data import create_demo_members
from tests.kafka_helpers import service_env

pytestmark = pytest.mark.integration

#: What each service logs once its start-up is over and its loop runs.
RUNNING = {
    "dispatcher": "consumer loop started",
    "extractor": "consumer loop started",
    "notifier": "consumer loop started",
    "scheduler": "scheduler started",
    "admin": "Application startup complete",  # uvicorn's
}


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (sig - 1)))


@contextlib.contextmanager
def _starting(
    service: str, kafka: str, tmp_path: Path, admin_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``service`` as a process on ``kafka``, once its start-up has begun catching SIGTERM (its first step);
    the admin API on ``admin_env["EXPORT_ADMIN_PORT"]`` when given (else a free port), with ``admin_env`` added."""
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(catalog_url, migrate=True).close()
    env = service_env(kafka, f"t{uuid.uuid4().hex[:10]}.", catalog_url, f"sqlite:///{tmp_path / 'm.db'}")
    admin = {"EXPORT_ADMIN_HOST": "127.0.0.1", "EXPORT_ADMIN_PORT": str(free_port()), **(admin_env or {})}
    pipeline = LocalPipeline(env=env, log_dir=tmp_path, services=(service,), service_env={"admin": admin})
    pipeline.start()
    process = pipeline.processes[service]
    try:
        wait_until(
            lambda: bool(pipeline.dead()) or _catches(process.pid, signal.SIGTERM),
            timeout=60,
            interval=0.005,
            what=f"{service} starting",
        )
        yield process
    finally:
        pipeline.stop()


def _log(service: str, tmp_path: Path) -> str:
    return (tmp_path / f"{service}.log").read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("service", sorted(RUNNING))
def test_sigterm_during_start_up_stops_the_service_with_status_0(service: str, kafka_bootstrap: str, tmp_path: Path):
    with _starting(service, kafka_bootstrap, tmp_path) as process:
        process.send_signal(signal.SIGSTOP)
        # Frozen, its log says where it stands: its loop not started yet.
        assert RUNNING[service] not in _log(service, tmp_path)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        status = process.wait(60)
    assert status == 0, _log(service, tmp_path)
    assert "Traceback" not in _log(service, tmp_path)


@pytest.mark.parametrize("service", ["admin", "dispatcher", "scheduler"])
def test_sigterm_while_start_up_waits_for_an_unreachable_kafka_stops_the_service_at_once(service: str, tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"  # a port nothing listens on any more
    with _starting(service, nowhere, tmp_path) as process:
        process.send_signal(signal.SIGTERM)  # start-up then waits for Kafka (10 s and more a try)
        status = process.wait(15)
    assert status == 0, _log(service, tmp_path)


def _admin_env(tmp_path: Path, shutdown_seconds: int, **more: str) -> tuple[str, int, dict[str, str]]:
    """An admin token (written to its tokens file), a free port and the admin API's environment with them."""
    token, port = f"tok-{uuid.uuid4().hex}", free_port()
    entry = {"name": "ops", "sha256": token_hash(token), "role": "admin", "business_units": []}
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [entry]}))
    admin_env = {
        "EXPORT_ADMIN_PORT": str(port),
        "EXPORT_ADMIN_TOKENS_FILE": str(tmp_path / "tokens.yaml"),
        "EXPORT_ADMIN_SHUTDOWN_SECONDS": str(shutdown_seconds),
        **more,
    }
    return token, port, admin_env


def _wait_serving(process: subprocess.Popen[bytes], tmp_path: Path) -> None:
    wait_until(
        lambda: process.poll() is not None or RUNNING["admin"] in _log("admin", tmp_path),
        timeout=60,
        what="the admin API serving",
    )


def test_sigterm_once_the_admin_api_serves_is_uvicorns_graceful_shutdown_then_status_0(
    kafka_bootstrap: str, tmp_path: Path
):
    """Once uvicorn serves, SIGTERM is its graceful shutdown, then the process closes what it opened and ends with
    status 0, as the other services once their loop runs (before: uvicorn raised the signal again on its way out,
    unhandled by then: 143)."""
    with _starting("admin", kafka_bootstrap, tmp_path) as process:
        _wait_serving(process, tmp_path)
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    assert status == 0, _log("admin", tmp_path)
    assert "Finished server process" in _log("admin", tmp_path)  # uvicorn's graceful shutdown, to its end
    assert "admin API stopped" in _log("admin", tmp_path)  # then its Kafka producer and catalog closed
    assert "Traceback" not in _log("admin", tmp_path)


def test_sigterm_while_a_client_holds_a_request_open_ends_the_admin_api_within_its_shutdown_seconds(
    kafka_bootstrap: str, tmp_path: Path
):
    """A client sends a write's headers, is told to go on (100 Continue: the API waits for the body) and sends
    nothing more, as a stalled upload. On SIGTERM uvicorn waits for requests in hand: before, with no bound (a
    second SIGTERM did not cut it short either), so the pod ended by Kubernetes' SIGKILL (137); now for
    EXPORT_ADMIN_SHUTDOWN_SECONDS, then it cancels the request and the process closes what it opened, status 0."""
    seconds = 2
    token, port, admin_env = _admin_env(tmp_path, seconds)
    with _starting("admin", kafka_bootstrap, tmp_path, admin_env) as process:
        _wait_serving(process, tmp_path)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(
                b"PUT /api/v1/saved-queries/stalled HTTP/1.1\r\nHost: admin\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            # The API asks for the body once it reads it: the request is in hand, waiting for the client.
            assert client.recv(1024).startswith(b"HTTP/1.1 100 Continue"), _log("admin", tmp_path)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            status = process.wait(seconds + 20)  # the request's bound, then closing the producer and the catalog
            took = time.monotonic() - signalled
    assert status == 0, _log("admin", tmp_path)
    assert seconds <= took, _log("admin", tmp_path)  # the request was given its seconds: it held the shutdown
    assert "timeout graceful shutdown exceeded" in _log("admin", tmp_path)  # uvicorn's, cancelling it
    assert "admin API stopped" in _log("admin", tmp_path)


#: A process's own start and end around the bounds (imports, closing the catalog, the interpreter's exit).
PROCESS_MARGIN_SECONDS = 10


def test_sigterm_while_a_run_waits_for_kafkas_acknowledgement_ends_the_admin_api_within_its_bound(
    tmp_path: Path, freezable_broker: LocalKafka
):
    """A run is requested while the broker is frozen (SIGSTOP: it holds its connections and answers nothing),
    so the request's thread waits for the record's acknowledgement, then SIGTERM. uvicorn cancels the request after
    EXPORT_ADMIN_SHUTDOWN_SECONDS; before, the process then waited for the producer (its close had no bound) until
    the delivery timeout had failed the record (120 s: the pod killed first, 137). Now the producer gets a few
    seconds, the record not acknowledged by then is abandoned (logged once, as a count) and the process ends with
    status 0 within the two bounds."""
    seconds = 2
    token, port, admin_env = _admin_env(
        tmp_path, seconds, EXPORT_ALLOWED_DESTINATIONS="127.0.0.1", EXPORT_LOG_FORMAT="json"
    )
    members = make_engine(f"sqlite:///{tmp_path / 'm.db'}")  # _starting's member store: the query is checked on it
    create_demo_members(members, 5)
    members.dispose()
    answers: list[httpx.Response | Exception] = []
    broker = freezable_broker
    with _starting("admin", broker.bootstrap_servers, tmp_path, admin_env) as process:
        _wait_serving(process, tmp_path)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as api:
            for collection, body in _RUN_OBJECTS:
                answer = api.post(f"/api/v1/{collection}", json=body)
                assert answer.status_code == 201, answer.text
            # A first run acknowledged: the producer knows the topic's partitions and leaders from then on.
            assert api.post("/api/v1/export-definitions/nightly/runs").status_code == 202, _log("admin", tmp_path)
            broker.pause()
            try:

                def request_run() -> None:
                    try:
                        answers.append(api.post("/api/v1/export-definitions/nightly/runs"))
                    except httpx.HTTPError as exc:  # the connection closed without an answer
                        answers.append(exc)

                requester = threading.Thread(target=request_run, daemon=True)
                requester.start()
                # Recorded (queued) before it is published: from then on its thread is handing it to Kafka.
                wait_until(
                    lambda: len(api.get("/api/v1/runs", params={"status": "queued"}).json()) == 2,
                    timeout=30,
                    what="the second run recorded",
                )
                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                try:
                    status = process.wait(seconds + PRODUCER_CLOSE_SECONDS + PROCESS_MARGIN_SECONDS)
                except subprocess.TimeoutExpired:
                    status = None
                took = time.monotonic() - signalled
                requester.join(30)
            finally:
                broker.resume()
    log = _log("admin", tmp_path)
    assert status == 0, f"status {status} after {took:.1f} s: {log}"
    assert took <= seconds + PRODUCER_CLOSE_SECONDS + PROCESS_MARGIN_SECONDS, log  # before: 120 s and more
    assert "admin API stopped" in log
    failed = [line for line in log.splitlines() if "Kafka records not acknowledged as the producer closed" in line]
    assert len(failed) == 1, log  # once, as a count, without the record
    assert '"records": 1' in failed[0]
    assert "nightly" not in failed[0]
    # The request was answered when uvicorn cancelled it (its bare 500, as before): the client is not left hanging.
    assert len(answers) == 1
    assert isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 500


#: A profile, query, template and definition a run can be requested of (the profile on an allowed address).
_RUN_OBJECTS = [
    (
        "connection-profiles",
        {
            "name": "partner",
            "base_url": "http://127.0.0.1:9/v2",
            "auth": {"type": "basic", "username": "exporter", "password": "pw"},
        },
    ),
    ("saved-queries", {"name": "gold", "sql": "SELECT id, email FROM members"}),
    ("http-templates", {"name": "upsert", "query": "gold", "profile": "partner", "path": "/members"}),
    ("export-definitions", {"name": "nightly", "query": "gold", "template": "upsert"}),
]


#: The admin API's server, given SIGTERM in the instant between start-up's handlers and uvicorn's own (just before
#: uvicorn installs its handlers): it must not serve on as if nothing came.
_BETWEEN_THE_HANDLERS = """
import os, signal
import uvicorn
from services.admin.__main__ import _Server

uvicorns = uvicorn.Server.capture_signals


def signal_first(self):
    os.kill(os.getpid(), signal.SIGTERM)  # delivered here, before uvicorn's handlers are installed
    return uvicorns(self)


uvicorn.Server.capture_signals = signal_first


async def app(scope, receive, send):
    raise AssertionError("nothing is served")


server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None))
server.run()
print("started" if server.started else "not started", flush=True)
"""


def test_a_sigterm_just_before_uvicorn_takes_the_signals_over_still_stops_the_admin_api(tmp_path: Path):
    """The admin API hands the signals from start-up's handlers (exit at once) to uvicorn's through one that only
    records the stop: a SIGTERM in between is seen once uvicorn's are in place, and uvicorn starts, serves nothing
    and stops (status 0) instead of serving on."""
    process = subprocess.run(
        [sys.executable, "-c", _BETWEEN_THE_HANDLERS], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (process.returncode, process.stdout) == (0, "started\n"), process.stderr


#: A service's entry module run as ``python -m`` runs it, its first import of the catalog package (after the entry
#: module's first statement, before start-up's steps) held: "importing" printed, then stdin read (never written).
_HELD_IN_ITS_IMPORTS = """
import importlib.abc, runpy, sys


class HoldTheCatalogImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "shared.catalog":
            print("importing", flush=True)
            sys.stdin.readline()
        return None


sys.meta_path.insert(0, HoldTheCatalogImport())
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("service", sorted(RUNNING))
def test_sigterm_during_the_services_imports_stops_it_with_status_0(service: str, tmp_path: Path):
    """A pod stopped while its service still imports its modules (a second and more on a busy node, before
    start-up's first step) exits with status 0, not 143: a CI run saw the extractor ended so, SIGTERM coming
    seconds after it was started."""
    output = tmp_path / "output"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _HELD_IN_ITS_IMPORTS, f"services.{service}"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: process.poll() is not None or "importing" in output.read_text(errors="replace"),
            timeout=60,
            what=f"{service} importing its modules",
        )
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdin is not None
        process.stdin.close()
    assert status == 0, output.read_text(errors="replace")[-3000:]
