"""End-to-end benchmark (issue 18): the whole pipeline, as processes on real Kafka, beside its raw ceilings and
the naive script a user would write, all measured in the same run against the same receiver.

Two scenarios, each with its own SQLite member store (demo members, cached under .local/bench), its own
catalog set up as a user would (``exportctl db upgrade``, then ``exportctl apply -f`` a manifest whose
profile points at the lean receiver, tests/benchmarks/lean_receiver.py, its own process on 127.0.0.1) and
its own topics:

- **batch**: N members (``--members``, default 1,000,000), a template of 500 members a request whose body
  writes five columns of each member (``{"members": [{"id": …, "email": …}, …]}``);
- **single**: M members (``--single-members``, default 100,000), a one-member template (batch size 1, a
  body of the same five columns).

The bodies are ``json_body`` structures (``--body json``, the default: what the README recommends for
speed) or Jinja text (``--body text``).

For each scenario, one after the other (nothing else of the benchmark runs meanwhile):

- **pipeline**: the four services as processes (scheduler idle, extractor, dispatcher, notifier). After a
  warm-up run of 1,000 members (consumer groups joined, code warm), ``exportctl run`` is started and the
  clock stops when the catalog records the run final (polled every 0.1 s); exportctl's own start-up is
  inside that time. Also the receiver's rate for the pipeline (its first to its last request: throughput
  without the fixed start and end costs) and each service's peak RSS (VmHWM, start-up and warm-up included).
- **raw ceilings**: (1) a plain script reading the same rows (sqlite3) and posting the same bodies with
  aiohttp at the dispatcher's concurrency: the bytes the template renders (orjson for a ``json_body``,
  ``json.dumps`` for a text body; the receiver's byte counts show they are the same), on asyncio's own event
  loop as a user's script would be, and again on uvloop (the dispatcher's loop: the table's "x uvloop raw"
  compares with that one too; the slowest raw stage stays the ceiling of the "x slowest raw" column); each
  twice, taking turns, the faster run kept; (2) bare
  kafka-python producing the member-batch records the extractor sends (the same bytes, encoded
  beforehand, untimed: whole requests, 64 members a record at least), acks=all and lz4 as the services,
  then a bare consumer (no group) reading them back.
- **naive script**: read the rows, one blocking POST at a time with ``requests`` (one Session, keep-alive).

``--variant NAME=A,B`` runs the pipeline once per value of a setting of the services (an ``EXPORT_*``
variable, or ``BENCH_DISPATCHERS``: how many dispatcher processes run, in one consumer group, sharing
``--concurrency`` so the requests in flight stay the raw loop's), in turn,
``--repeat`` times (A, B, A, B, ...): an A/B comparison in the same run, beside the same raw ceilings (the machine
may be shared: alternate, and compare the ratios).

``--partner-latency-ms N`` makes the receiver answer each request N ms late, as a partner API across a network
does: every contender then waits for its answers as it would in production (the default 0 answers at once: the
CPU-bound case, where the naive script runs close to the raw ceiling).

``--request catalog|api|both`` says how ``exportctl run`` requests the runs (the warm-up's and the timed one):
``catalog`` (the default) on the catalog directly, as before, its start-up (imports, the Kafka connection) inside
the timed run; ``api`` through the admin API, as users on Kubernetes do (the chart deploys the admin service):
the admin service then runs as a process too (``python -m services.admin`` on 127.0.0.1, an operator token of the
benchmark's own), and ``exportctl run`` gets ``EXPORT_API_URL`` and ``EXPORT_API_TOKEN``; ``both`` runs each in
turn (catalog, API, catalog, API, ... within each value of ``--variant``). The admin process's CPU seconds and
peak RSS are reported with the services'; the timeline adds when the API received the request (its answer less
its own handling, from its ``/metrics``) and when it answered (exportctl printed the run's id; in catalog mode
the same line comes after the run request's acknowledgement).

Prints one table (members/s, requests/s, seconds, peak RSS per service, ratios to the slowest raw stage
and to the naive script), writes a bar chart of throughput per stage (``<out>/e2e.png``) and the table
with the machine it ran on (``<out>/e2e.md``). Figures only: nothing here passes or fails on a timing.

    .venv/bin/python -m tests.benchmarks.bench_e2e [--members 1000000] [--single-members 100000]
        [--concurrency 8] [--timeout 1800] [--body json|text] [--out docs/benchmarks]
        [--variant EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT=1,2 --repeat 2] [--request catalog|api|both]
        [--partner-latency-ms 20]

``KAFKA_BOOTSTRAP_SERVERS`` reuses a running broker; otherwise a local one is started. Catalogs, manifests
and service logs of the last run stay in .local/bench/e2e.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import requests
import uvloop
import yaml

from devtools.kafka_broker import LocalKafka
from devtools.pipeline import SERVICES, LocalPipeline
from devtools.processes import free_port, wait_until
from services.admin.bearer_tokens import token_hash
from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.catalog import CatalogStores
from shared.domain.runs import RunRecord
from shared.member_batches import members_per_record
from tests.benchmarks.common import (
    CACHE,
    HEADERS,
    SINGLE_BODY,
    bare_consume,
    bare_produce,
    cpu_seconds,
    member_batch_records,
    new_topic,
    peak_rss_mb,
    plain_aiohttp,
    receiver_rate,
    receiver_stats,
    reset_receiver,
    sqlite_store,
)
from tests.benchmarks.e2e_timeline import RunClock, describe, idle_gaps, timeline
from tests.benchmarks.lean_receiver import lean_receiver
from tests.metrics_helpers import scrape, values

EXPORTCTL = [sys.executable, "-m", "shared.cli"]
WORK_DIR = CACHE / "e2e"
BATCH_SIZE = 500
PAGE_SIZE = 5_000  # the extractor's default page; a whole number of batches of 500 and of 1
WARM_UP_MEMBERS = 1_000
#: A variant's pseudo-setting: how many dispatcher processes the pipeline runs (the services never read it).
DISPATCHERS = "BENCH_DISPATCHERS"
#: ``--variant BENCH_CODE=DIR,DIR``: the services run from another copy of the code (e.g. the code before a change,
#: ``git archive`` into DIR): their working directory and PYTHONPATH (the benchmark, exportctl and the raw scripts
#: stay this tree's).
CODE = "BENCH_CODE"
DISPATCHER_CONCURRENCY = "EXPORT_DISPATCHER_CONCURRENCY"
UVLOOP_RAW = "raw on uvloop"  # the raw aiohttp script run on the event loop the dispatcher runs on
#: What the saved query returns (the demo export's columns) and what the bodies write of each member.
COLUMNS = ("id", "email", "first_name", "last_name", "tier", "points", "locale", "consent_email")
BODY_COLUMNS = ("id", "email", "first_name", "tier", "points")
SELECT = f"SELECT {', '.join(COLUMNS)} FROM members"
#: The batch body: the single-member body for each member of the batch, as ``json.dumps`` writes a list.
BATCH_BODY = '{"members": [{% for member in members %}' + SINGLE_BODY + '{{ ", " if not loop.last }}{% endfor %}]}'
SERVICE_ABBREVIATIONS = {
    "scheduler": "sch",
    "extractor": "ext",
    "dispatcher": "dis",
    "notifier": "not",
    "admin": "adm",
}
#: How ``exportctl run`` requests the runs (``--request``): on the catalog directly, or through the admin API.
CATALOG, API = "catalog", "api"
REQUEST_CHOICES = (CATALOG, API)
#: ``--request both``: each way in turn, the catalog first.
BOTH = "both"
#: The admin service's process (``python -m services.admin``), started with the others in API mode.
ADMIN = "admin"
#: The admin API's request histogram (services/admin/request_metrics.py) and the route that executes a definition.
ADMIN_REQUEST_SECONDS = "member_export_admin_http_request_duration_seconds"
EXECUTE_ROUTE = "/api/v1/export-definitions/{name}/runs"


@dataclass(frozen=True)
class Scenario:
    name: str  # also the template's and the definition's name
    title: str
    members: int
    batch_size: int
    body_kind: str = "json"  # json: the template's json_body structure; text: a Jinja text body

    @property
    def body(self) -> dict[str, Any]:
        """The template's body, either way (the same bytes reach the partner)."""
        if self.body_kind == "text":
            return {"body": SINGLE_BODY if self.batch_size == 1 else BATCH_BODY}
        single = {column: f"{{{{ member.{column} }}}}" for column in BODY_COLUMNS}
        if self.batch_size == 1:
            return {"json_body": single}
        return {"json_body": {"members": {"$each": "members", "columns": list(BODY_COLUMNS)}}}

    @property
    def requests(self) -> int:
        return -(-self.members // self.batch_size)

    def raw_body(self, rows: Sequence[Sequence[Any]]) -> bytes:
        """What the template renders for ``rows``, written by hand: the same bytes."""
        positions = [COLUMNS.index(c) for c in BODY_COLUMNS]
        members = [{c: row[p] for c, p in zip(BODY_COLUMNS, positions, strict=True)} for row in rows]
        body = members[0] if self.batch_size == 1 else {"members": members}
        # A json_body is encoded by orjson (compact); a text body writes what json.dumps writes.
        return orjson.dumps(body) if self.body_kind == "json" else json.dumps(body).encode()


@dataclass(frozen=True)
class Row:
    """One line of the table: a contender of a scenario."""

    scenario: Scenario
    kind: str  # pipeline, raw or naive
    label: str
    members_per_second: float
    requests_per_second: float
    seconds: float
    rss: str = ""


# --- the contenders -------------------------------------------------------------------------------------------


def read_rows(store: Path, page_size: int = PAGE_SIZE) -> Iterator[list[tuple[Any, ...]]]:
    """The query's rows in key order, a page at a time, with plain sqlite3."""
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        cursor = connection.execute(f"{SELECT} ORDER BY id")
        while rows := cursor.fetchmany(page_size):
            yield rows
    finally:
        connection.close()


def bodies(store: Path, scenario: Scenario) -> Iterator[bytes]:
    """The request bodies, read and written as the plain scripts go (lazily: memory stays flat)."""
    for rows in read_rows(store):
        for start in range(0, len(rows), scenario.batch_size):
            yield scenario.raw_body(rows[start : start + scenario.batch_size])


def raw_http(
    store: Path, scenario: Scenario, base_url: str, concurrency: int, timeout: float, loop: str = "asyncio"
) -> dict[str, Any]:
    """Raw ceiling (1): read the rows and post the bodies with a plain aiohttp loop, on asyncio's own event loop
    (as a user's script would) or on uvloop (the dispatcher's default); the receiver's stats and the script's
    seconds."""
    reset_receiver(base_url)
    started = time.perf_counter()
    posting = plain_aiohttp(f"{base_url}/members", bodies(store, scenario), concurrency)
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(posting, timeout))
    return receiver_stats(base_url) | {"seconds": time.perf_counter() - started}


def naive_script(store: Path, scenario: Scenario, base_url: str, timeout: float) -> dict[str, Any]:
    """The script a user would write first: read the rows, one blocking POST at a time (requests)."""
    reset_receiver(base_url)
    started = time.perf_counter()
    with requests.Session() as session:
        for body in bodies(store, scenario):
            session.post(f"{base_url}/members", data=body, headers=HEADERS, timeout=60).raise_for_status()
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the naive script did not finish within {timeout:.0f} s")
    return receiver_stats(base_url) | {"seconds": time.perf_counter() - started}


def raw_kafka(store: Path, scenario: Scenario, bootstrap: str, timeout: float) -> dict[str, Any]:
    """Raw ceiling (2): the extractor's records for these rows (encoded untimed), produced then consumed bare."""
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        cursor = connection.execute(f"{SELECT} ORDER BY id")
        records = member_batch_records(
            cursor,
            definition=scenario.name,
            template=scenario.name,
            # The extractor's records: whole requests, at least its default members per record.
            batch_size=members_per_record(scenario.batch_size, DEFAULT_RECORD_MEMBERS),
            page_size=PAGE_SIZE,
        )
    finally:
        connection.close()
    topic = new_topic(bootstrap)
    produce_seconds = bare_produce(bootstrap, topic, records, timeout)
    read, consume_seconds = bare_consume(bootstrap, topic, timeout)
    return {
        "records": len(records),
        "bytes": sum(len(v) for _, v in records),
        "produce_seconds": produce_seconds,
        "consume_seconds": consume_seconds,
        "read": read,
    }


class PipelineRun:
    """One scenario's catalog (set up with exportctl) and its four services as processes."""

    def __init__(
        self,
        scenario: Scenario,
        store_url: str,
        bootstrap: str,
        base_url: str,
        concurrency: int,
        broker_pid: int | None = None,
        variant: dict[str, str] | None = None,
        request: str = CATALOG,
    ) -> None:
        self.scenario = scenario
        #: How ``exportctl run`` requests the runs: ``catalog`` or ``api`` (the admin service then runs too).
        self.request = request
        self.broker_pid = broker_pid
        self.bootstrap = bootstrap
        #: When the last ``exportctl run`` was launched (the timeline's origin).
        self.clock = RunClock(time.time(), time.monotonic())
        self.work_dir = WORK_DIR / scenario.name
        self.catalog_url = f"sqlite:///{(self.work_dir / 'catalog.db').resolve()}"
        self.env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EXPORT_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:8]}.",
            "EXPORT_TOPIC_PARTITIONS": "6",
            "EXPORT_CATALOG_URL": self.catalog_url,
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_METRICS_PORT": "0",
            # The receiver listens on loopback, which the SSRF guard refuses unless allowed.
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            DISPATCHER_CONCURRENCY: str(concurrency),
            **(variant or {}),
        }
        self.base_url = base_url
        #: Dispatcher processes (replicas in one consumer group): ``--variant BENCH_DISPATCHERS=1,2``. They share the
        #: concurrency (each takes its part), so the requests in flight stay the raw loop's.
        self.dispatchers = int((variant or {}).get(DISPATCHERS, "1"))
        if DISPATCHER_CONCURRENCY not in (variant or {}):
            self.env[DISPATCHER_CONCURRENCY] = str(max(1, concurrency // self.dispatchers))
        #: The copy of the code the services run (``--variant BENCH_CODE=DIR,DIR``; None: this tree).
        self.code = Path((variant or {})[CODE]).resolve() if CODE in (variant or {}) else None
        if self.code is not None:
            self.env["PYTHONPATH"] = str(self.code)
        # Never the developer's exportctl contexts: a current context with an API URL would take the catalog runs
        # through an API, and its token would go to ours.
        self.exportctl_env = {"EXPORTCTL_CONFIG": str(self.work_dir / "no-exportctl-config.yaml")}
        self.admin_port = free_port() if request == API else 0
        self.admin_token = secrets.token_urlsafe(24)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def manifest(self) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = [
            {"kind": "ConnectionProfile", "name": "lean-receiver", "spec": {"base_url": self.base_url}},
            {"kind": "SavedQuery", "name": "members", "spec": {"sql": SELECT, "key_column": "id"}},
            {
                "kind": "SavedQuery",
                "name": "warm-up-members",
                "spec": {"sql": f"{SELECT} WHERE id <= {WARM_UP_MEMBERS}", "key_column": "id"},
            },
        ]
        for name, query in ((self.scenario.name, "members"), (f"{self.scenario.name}-warm-up", "warm-up-members")):
            template = {
                "query": query,
                "profile": "lean-receiver",
                "method": "POST",
                "path": "/members",
                **self.scenario.body,
                "batch_size": self.scenario.batch_size,
            }
            documents.append({"kind": "HttpTemplate", "name": name, "spec": template})
            documents.append({"kind": "ExportDefinition", "name": name, "spec": {"query": query, "template": name}})
        return documents

    def exportctl(self, *args: str, timeout: float) -> str:
        done = subprocess.run(
            [*EXPORTCTL, *args],
            env={**os.environ, **self.env, **self.exportctl_env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"exportctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def set_up(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        manifest = self.work_dir / "manifest.yaml"
        manifest.write_text(yaml.safe_dump_all(self.manifest(), sort_keys=False, allow_unicode=True))
        self.exportctl("db", "upgrade", timeout=120)
        self.exportctl("apply", "-f", str(manifest), timeout=120)
        if self.request == API:
            entry = {"name": "bench-e2e", "sha256": token_hash(self.admin_token), "role": "operator"}
            (self.work_dir / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [entry]}))

    def admin_env(self) -> dict[str, str]:
        """The admin service's own settings (on top of the pipeline's): loopback, a free port, our token."""
        return {
            "EXPORT_ADMIN_HOST": "127.0.0.1",
            "EXPORT_ADMIN_PORT": str(self.admin_port),
            "EXPORT_ADMIN_TOKENS_FILE": str(self.work_dir / "tokens.yaml"),
        }

    def run_env(self) -> dict[str, str]:
        """What ``exportctl run`` gets on top of the pipeline's settings: in API mode, the API and the token."""
        if self.request != API:
            return self.exportctl_env
        return {**self.exportctl_env, "EXPORT_API_URL": self.admin_url, "EXPORT_API_TOKEN": self.admin_token}

    def wait_for_admin(self, pipeline: LocalPipeline, timeout: float) -> None:
        """Until the admin API answers its health check (its start-up is not part of any timed run)."""

        def ready() -> bool:
            if ADMIN in pipeline.dead():
                raise RuntimeError(f"the admin API exited: {pipeline.log(ADMIN)[-2000:]}")
            try:
                return httpx.get(f"{self.admin_url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, what="the admin API")

    def execute_handling(self) -> tuple[float, float]:
        """The admin API's run requests so far and the seconds it spent on them (its own /metrics), or zeros in
        catalog mode."""
        if self.request != API:
            return 0.0, 0.0
        samples = scrape(self.admin_port)
        labels = {"route": EXECUTE_ROUTE, "method": "POST"}
        count = sum(value for _, value in values(samples, f"{ADMIN_REQUEST_SECONDS}_count", **labels))
        seconds = sum(value for _, value in values(samples, f"{ADMIN_REQUEST_SECONDS}_sum", **labels))
        return count, seconds

    def run(self, timeout: float) -> dict[str, Any]:
        """Warm up, then time ``exportctl run`` until the run is recorded final; stop the services."""
        catalog = CatalogStores.from_url(self.catalog_url)
        try:
            replicas = tuple(f"dispatcher-{number}" for number in range(2, self.dispatchers + 1))
            admin = (ADMIN,) if self.request == API else ()
            services = LocalPipeline(
                self.env,
                self.work_dir / "logs",
                services=(*SERVICES, *replicas, *admin),
                service_env=dict.fromkeys(admin, self.admin_env()),
                modules=dict.fromkeys(replicas, "services.dispatcher"),
                cwd=self.code,
            )
            with services as pipeline:
                if admin:
                    self.wait_for_admin(pipeline, timeout=120)
                # The warm-up goes the timed run's way: in API mode the admin's producer and catalog are warm, as a
                # long-running admin service's are.
                warm_up, _, _, _ = self._run_and_wait(f"{self.scenario.name}-warm-up", catalog, pipeline, timeout)
                reset_receiver(self.base_url)
                pids = {name: process.pid for name, process in pipeline.processes.items()}
                if self.broker_pid is not None:
                    pids["broker"] = self.broker_pid
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                requests_before, handling_before = self.execute_handling()
                seconds, printed, published, record = self._run_and_wait(self.scenario.name, catalog, pipeline, timeout)
                cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
                requests_after, handling_after = self.execute_handling()
                peaks = {name: peak_rss_mb(process.pid) for name, process in pipeline.processes.items()}
                stats = receiver_stats(self.base_url)
        finally:
            catalog.close()
        # The admin API's own time on the timed run request (one request: its histogram's sum moved by that much).
        timed_once = self.request == API and requests_after - requests_before == 1
        api_seconds = handling_after - handling_before if timed_once else None
        marks = timeline(
            bootstrap=self.bootstrap,
            topic_prefix=self.env["EXPORT_TOPIC_PREFIX"],
            run_id=record.run_id,
            clock=self.clock,
            log_dir=self.work_dir / "logs",
            receiver=stats,
            exportctl_returned=published,
            recorded=seconds,
            run_printed=printed,
            api_seconds=api_seconds,
        )
        marks |= idle_gaps(sorted(httpx.get(f"{self.base_url}/times").json()))
        return {
            "timeline": marks,
            "seconds": seconds,
            "published": published,
            "warm_up": warm_up,
            "record": record,
            "extraction": extraction_times(self.work_dir / "logs" / "extractor.log", record.run_id),
            "peaks": peaks,
            "cpu": cpu,
            "stats": stats,
        }

    def _run_and_wait(
        self, definition: str, catalog: CatalogStores, pipeline: LocalPipeline, timeout: float
    ) -> tuple[float, float, float, RunRecord]:
        """``exportctl run definition`` until the catalog records the run final: seconds after the launch to the
        run recorded, to the run's id printed (in API mode, the API's answer) and to exportctl's exit; the run."""
        self.clock = RunClock(time.time(), time.monotonic())
        started = self.clock.monotonic
        run_id, printed, published = self._exportctl_run(definition, timeout)
        while True:
            record = catalog.runs.get_run(run_id)
            if record is not None and record.status.is_final:
                return time.monotonic() - started, printed, published, record
            if dead := pipeline.dead():
                raise RuntimeError(f"service(s) {', '.join(dead)} exited; logs in {self.work_dir / 'logs'}")
            if time.monotonic() - started > timeout:
                status = record.status.value if record else "not recorded"
                raise TimeoutError(f"run {run_id} of {definition} not final after {timeout:.0f} s ({status})")
            time.sleep(0.1)

    def _exportctl_run(self, definition: str, timeout: float) -> tuple[uuid.UUID, float, float]:
        """Launch ``exportctl run definition`` (the clock's origin): the run's id, and the seconds after the launch
        at which exportctl printed it and at which it exited. Its lines are timed as they come (a reader thread):
        through the API the id is printed as soon as the API answered, and exportctl exits some time later."""
        started = self.clock.monotonic
        lines: list[tuple[float, str]] = []
        stderr_path = self.work_dir / "exportctl-run.stderr"
        with (
            stderr_path.open("w") as stderr,  # a file, not a pipe: nothing blocks whatever exportctl writes there
            subprocess.Popen(
                [*EXPORTCTL, "run", definition],
                env={**os.environ, **self.env, **self.run_env()},
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            ) as process,
        ):
            stdout = process.stdout
            assert stdout is not None  # stdout=PIPE

            def read() -> None:
                for line in stdout:  # TextIOWrapper hands over each line as soon as its bytes arrived
                    lines.append((time.monotonic() - started, line))

            reader = threading.Thread(target=read, name="exportctl-stdout", daemon=True)
            reader.start()
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise TimeoutError(f"exportctl run {definition} did not exit within {timeout:.0f} s") from None
            published = time.monotonic() - started
            reader.join(timeout)
        if code != 0:
            error = stderr_path.read_text(errors="replace").strip()
            raise RuntimeError(f"exportctl run {definition} failed ({code}): {error}")
        for printed, line in lines:
            if found := re.search(r"run ([0-9a-f-]{36}) requested", line):
                return uuid.UUID(found.group(1)), printed, published
        raise RuntimeError(f"exportctl run {definition} printed no run id: {''.join(text for _, text in lines)!r}")


def extraction_times(log: Path, run_id: uuid.UUID) -> tuple[float, float] | None:
    """When the extractor started and completed the run (its "extraction started" and "extraction completed" log
    lines), on this machine's monotonic clock (the receiver's), or None when its log does not say: the pace the
    dispatcher cannot outrun."""
    times: dict[str, datetime] = {}
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if str(run_id) not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") in ("extraction started", "extraction completed"):
            times[entry["event"]] = datetime.fromisoformat(entry["timestamp"])
    if len(times) < 2:
        return None
    to_monotonic = time.monotonic() - time.time()
    started, completed = times["extraction started"], times["extraction completed"]
    return started.timestamp() + to_monotonic, completed.timestamp() + to_monotonic


def extraction(run: dict[str, Any]) -> str:
    """How long the extraction took, and how long after it the receiver got its last request."""
    if run["extraction"] is None or not run["stats"]["last"]:
        return "the extraction's time not logged"
    started, completed = run["extraction"]
    trailing = run["stats"]["last"] - completed
    return f"its extraction {completed - started:.1f} s, the receiver's last request {trailing:.1f} s after it"


def timed(scenario: Scenario, kind: str, label: str, requests: int, seconds: float, rss: str = "") -> Row:
    """The row of a contender that moved the scenario's members in ``requests`` requests (or records)."""
    return Row(scenario, kind, label, scenario.members / seconds, requests / seconds, seconds, rss)


# --- one scenario -----------------------------------------------------------------------------------------------


def warm_page_cache(store: Path) -> None:
    """Read the store's file once, so that every contender finds it in the page cache."""
    with store.open("rb") as file:
        while file.read(1 << 20):
            pass


@dataclass(frozen=True)
class Variant:
    """The pipeline's settings in one of its runs: an ``EXPORT_*`` variable's value (none: the defaults), and how
    ``exportctl run`` requests the run (``--request``)."""

    env: dict[str, str]
    repetition: int = 1  # which run of this value (A/B runs alternate)
    request: str = CATALOG
    #: Whether the label says the request mode (any run list but the catalog alone, the default) and the run's
    #: number (several runs, or a --variant: the labels stay as they were).
    show_request: bool = False
    numbered: bool = False

    @property
    def label(self) -> str:
        label = "pipeline"
        if self.show_request:
            label += " (API)" if self.request == API else " (catalog)"
        if self.env:
            label += " " + " ".join(f"{name.removeprefix('EXPORT_')}={value}" for name, value in self.env.items())
        return f"{label} #{self.repetition}" if self.numbered else label


def request_modes(spec: str) -> tuple[str, ...]:
    """``--request``: ``catalog``, ``api``, ``both`` (catalog then API) or the modes in the order to take turns,
    comma-separated (``api,catalog``: the API first)."""
    modes = REQUEST_CHOICES if spec == BOTH else tuple(mode.strip() for mode in spec.split(","))
    if not modes or any(mode not in REQUEST_CHOICES for mode in modes) or len(set(modes)) != len(modes):
        raise SystemExit(f"--request wants {CATALOG}, {API}, {BOTH} or {API},{CATALOG}: {spec!r}")
    return modes


def variants(spec: str | None, repeat: int, requests: Sequence[str] = (CATALOG,)) -> list[Variant]:
    """The pipeline runs ``--variant NAME=A,B``, ``--repeat`` and ``--request`` ask for, in the order to run them:
    A, B, A, B..., each value once per request mode in turn (A catalog, A API, B catalog, B API, A catalog...)."""
    settings: list[dict[str, str]] = [{}]
    if spec:
        name, _, values = spec.partition("=")
        if not (name.startswith("EXPORT_") or name in (DISPATCHERS, CODE)) or not values:
            raise SystemExit(
                f"--variant wants EXPORT_NAME=value,value..., {DISPATCHERS}=1,2 or {CODE}=DIR,DIR: {spec!r}"
            )
        settings = [{name: value.strip()} for value in values.split(",")]
    runs = [
        (repetition, setting, request)
        for repetition in range(1, repeat + 1)
        for setting in settings
        for request in requests
    ]
    show_request = tuple(requests) != (CATALOG,)
    numbered = bool(spec) or len(runs) > 1
    return [Variant(setting, repetition, request, show_request, numbered) for repetition, setting, request in runs]


def measure(
    scenario: Scenario,
    bootstrap: str,
    base_url: str,
    concurrency: int,
    timeout: float,
    broker_pid: int | None,
    runs: Sequence[Variant] = (Variant({}),),
) -> tuple[list[Row], list[str]]:
    """Every contender of ``scenario`` (the pipeline once per variant): the table's rows and notes."""
    say(f"{scenario.title}: member store")
    store_url = sqlite_store(scenario.members)
    store = Path(store_url.removeprefix("sqlite:///"))
    warm_page_cache(store)
    pipeline_rows: list[Row] = []
    notes: list[str] = []
    for variant in runs:
        pipeline = PipelineRun(
            scenario, store_url, bootstrap, base_url, concurrency, broker_pid, variant.env, variant.request
        )
        pipeline.set_up()
        say(f"{scenario.title}: {variant.label} (warm-up run, then the timed run)")
        run = pipeline.run(timeout)
        rows, run_notes = pipeline_results(scenario, variant, run)
        pipeline_rows += rows
        notes += run_notes
    # Each raw script twice, taking turns, the faster kept (a ceiling): the first run after the pipeline's services
    # stopped was seen up to 1.9x slower than the next, whichever loop it ran on.
    best: dict[str, dict[str, Any]] = {}
    for loop in ("asyncio", "uvloop", "asyncio", "uvloop"):
        say(f"{scenario.title}: raw aiohttp script on {loop}'s event loop")
        attempt = raw_http(store, scenario, base_url, concurrency, timeout, loop=loop)
        if loop not in best or attempt["seconds"] < best[loop]["seconds"]:
            best[loop] = attempt
    raw, raw_uvloop = best["asyncio"], best["uvloop"]
    say(f"{scenario.title}: naive requests script")
    naive = naive_script(store, scenario, base_url, timeout)
    say(f"{scenario.title}: bare kafka-python produce and consume")
    kafka = raw_kafka(store, scenario, bootstrap, timeout)

    records = kafka["records"]
    rows = [
        *pipeline_rows,
        timed(scenario, "raw", f"raw: sqlite3 + aiohttp (C={concurrency})", raw["requests"], raw["seconds"]),
        timed(
            scenario,
            "raw",
            f"{UVLOOP_RAW}: sqlite3 + aiohttp (C={concurrency})",
            raw_uvloop["requests"],
            raw_uvloop["seconds"],
        ),
        timed(scenario, "raw", "raw: kafka-python produce", records, kafka["produce_seconds"]),
        timed(scenario, "raw", "raw: kafka-python consume", records, kafka["consume_seconds"]),
        timed(scenario, "naive", "naive: sqlite3 + requests, 1 at a time", naive["requests"], naive["seconds"]),
    ]
    notes.append(
        f"{scenario.title}: the raw script sent {raw['requests']:,} requests / {raw['bytes']:,} bytes, the naive "
        f"script {naive['requests']:,} / {naive['bytes']:,}; Kafka: {records:,} records, {kafka['bytes'] / 1e6:.1f} MB"
    )
    return rows, notes


def pipeline_results(scenario: Scenario, variant: Variant, run: dict[str, Any]) -> tuple[list[Row], list[str]]:
    """The table's rows and the notes of one pipeline run."""
    stats = run["stats"]
    per_request = scenario.members / max(stats["requests"], 1)
    rss = " ".join(f"{SERVICE_ABBREVIATIONS.get(k, k)} {v:.0f}" for k, v in run["peaks"].items())
    span = (stats["last"] or 0) - (stats["first"] or 0)
    rows = [
        timed(
            scenario, "pipeline", f"{variant.label}: exportctl run → recorded", stats["requests"], run["seconds"], rss
        ),
        Row(
            scenario,
            "pipeline",
            f"{variant.label}: receiver first → last",
            receiver_rate(stats, per_request),
            receiver_rate(stats),
            span,
        ),
    ]
    record: RunRecord = run["record"]
    title = f"{scenario.title}, {variant.label}"
    notes = [
        f"{title}: run {record.status.value}, extracted {record.extracted:,}, delivered "
        f"{record.delivered:,}, failed {record.failed:,}; exportctl run returned after {run['published']:.2f} s; "
        f"the run's own duration (started → finished) {record.duration_seconds or 0:.1f} s, {extraction(run)}; "
        "the warm-up run "
        f"({WARM_UP_MEMBERS:,} members, services just started) recorded {run['warm_up']:.1f} s after exportctl run",
        f"{title}: CPU seconds during the timed run: "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in run["cpu"].items()),
        f"{title}: the receiver got {stats['requests']:,} requests / {stats['bytes']:,} bytes",
        f"{title}: timeline after exportctl run was launched:\n    " + "\n    ".join(describe(run["timeline"])),
    ]
    return rows, notes


# --- report -------------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    width = max(41, *(len(row.label) for row in rows))
    header = (
        f"{'scenario':<8} {'stage':<{width}} {'members/s':>10} {'requests/s':>10} {'seconds':>8} "
        f"{'x slowest raw':>13} {'x uvloop raw':>12} {'x naive':>7}  peak RSS MB"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        slowest = min(r.members_per_second for r in rows if r.scenario == row.scenario and r.kind == "raw")
        naive = next(r.members_per_second for r in rows if r.scenario == row.scenario and r.kind == "naive")
        uvloop_raw = next(
            r.members_per_second for r in rows if r.scenario == row.scenario and r.label.startswith(UVLOOP_RAW)
        )
        lines.append(
            f"{row.scenario.name.removeprefix('e2e-'):<8} {row.label:<{width}} {row.members_per_second:>10,.0f} "
            f"{row.requests_per_second:>10,.0f} {row.seconds:>8.2f} {row.members_per_second / slowest:>12.2f}x "
            f"{row.members_per_second / uvloop_raw:>11.2f}x {row.members_per_second / naive:>6.2f}x  {row.rss}".rstrip()
        )
    return lines


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": found.group(1).strip() if found else platform.processor() or "unknown",
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "memory": f"{int(memory.group(1)) / 1024**2:.0f} GiB" if memory else "unknown",
    }


def chart(rows: list[Row], scenarios: list[Scenario], host: dict[str, str], path: Path) -> None:
    """Horizontal bars of members/s per stage on a log scale, one panel per scenario; the dashed line is the
    slowest raw stage (the ceiling), the dotted one the naive script."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colours = {"pipeline": "#d62728", "raw": "#1f77b4", "naive": "#7f7f7f"}
    figure, axes = plt.subplots(len(scenarios), 1, figsize=(11, 3.3 * len(scenarios)), squeeze=False)
    for axis, scenario in zip(axes[:, 0], scenarios, strict=True):
        mine = [r for r in rows if r.scenario == scenario][::-1]  # the first row on top
        slowest = min(r.members_per_second for r in mine if r.kind == "raw")
        naive = next(r.members_per_second for r in mine if r.kind == "naive")
        values = [r.members_per_second for r in mine]
        axis.barh([r.label for r in mine], values, color=[colours[r.kind] for r in mine])
        axis.axvline(slowest, color=colours["raw"], linestyle="--", linewidth=1)
        axis.axvline(naive, color=colours["naive"], linestyle=":", linewidth=1.5)
        for y, row in enumerate(mine):
            text = f" {row.members_per_second:,.0f}/s"
            if row.kind == "pipeline":
                ratios = row.members_per_second / slowest, row.members_per_second / naive
                text += f"  {ratios[0]:.2f}x slowest raw, {ratios[1]:.2f}x naive"
            axis.text(
                row.members_per_second,
                y,
                text,
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
            )
        axis.set_xscale("log")
        axis.set_xlim(min(values) / 2, max(values) * 8)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.set_title(scenario.title, fontsize=10, loc="left")
        axis.set_xlabel("members/s, log scale" + (" (= requests/s)" if scenario.batch_size == 1 else ""))
        axis.tick_params(axis="y", labelsize=8)
    figure.suptitle(
        "member-export end to end: throughput per stage, same run "
        "(red: the pipeline; blue: raw stages, dashed: the slowest; grey, dotted: the naive script)\n"
        f"nproc {host['nproc']}, {host['cpu']}, Python {host['python']}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000, help="members of the batch-of-500 scenario")
    parser.add_argument("--single-members", type=int, default=100_000, help="members of the one-member scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="the dispatcher's and the raw loop's")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds each contender may take")
    parser.add_argument(
        "--partner-latency-ms",
        type=float,
        default=0.0,
        help="the receiver answers each request after this many ms, as a partner API across a network does "
        "(0: at once, the CPU-bound case)",
    )
    parser.add_argument(
        "--body",
        choices=("json", "text"),
        default="json",
        help="templates written as a json_body structure (the fast way) or as Jinja text",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where e2e.png and e2e.md go")
    parser.add_argument(
        "--variant",
        metavar="EXPORT_NAME=A,B",
        help="run the pipeline once per value of this setting of the services, in turn (an A/B comparison)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="pipeline runs per value (alternating: A, B, A, B)")
    parser.add_argument(
        "--request",
        default=CATALOG,
        metavar="catalog|api|both|api,catalog",
        help="how exportctl run requests the runs: on the catalog directly (the default), through the admin API "
        "(its service started too), or both in turn (both: the catalog first; api,catalog: the API first)",
    )
    args = parser.parse_args()
    runs = variants(args.variant, max(1, args.repeat), request_modes(args.request))
    began = time.monotonic()
    latency = f", partner latency {args.partner_latency_ms:g} ms" if args.partner_latency_ms else ""
    scenarios = [
        Scenario(
            "e2e-batch",
            f"batch: {args.members:,} members, template of {BATCH_SIZE} ({args.body} body{latency})",
            args.members,
            BATCH_SIZE,
            args.body,
        ),
        Scenario(
            "e2e-single",
            f"single: {args.single_members:,} members, one-member template ({args.body} body{latency})",
            args.single_members,
            1,
            args.body,
        ),
    ]
    rows: list[Row] = []
    notes: list[str] = []
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker_pid = None
        if not bootstrap:
            say("starting a local Kafka broker")
            broker = stack.enter_context(LocalKafka())
            bootstrap, broker_pid = broker.bootstrap_servers, broker.process.pid if broker.process else None
        base_url = stack.enter_context(lean_receiver(args.partner_latency_ms / 1000))
        for scenario in scenarios:
            scenario_rows, scenario_notes = measure(
                scenario, bootstrap, base_url, args.concurrency, args.timeout, broker_pid, runs
            )
            rows += scenario_rows
            notes += scenario_notes
    host = machine()
    lines = table(rows)
    command = (
        f"python -m tests.benchmarks.bench_e2e --members {args.members} --single-members {args.single_members} "
        f"--concurrency {args.concurrency}"
        + (f" --variant {args.variant}" if args.variant else "")
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
        + (f" --partner-latency-ms {args.partner_latency_ms:g}" if args.partner_latency_ms else "")
        + (f" --request {args.request}" if args.request != CATALOG else "")
    )
    kafka = f"the broker at {bootstrap}" if broker_pid is None else "a local single-node broker (KRaft)"
    machine_line = (
        f"machine: nproc {host['nproc']}, {host['cpu']}, {host['memory']} RAM, {host['system']}, "
        f"Python {host['python']}; Kafka: {kafka}"
    )
    print()
    print("\n".join(lines))
    print()
    for note in [*notes, machine_line, f"benchmark wall clock: {(time.monotonic() - began) / 60:.1f} min"]:
        print(note)
    args.out.mkdir(parents=True, exist_ok=True)
    chart(rows, scenarios, host, args.out / "e2e.png")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (args.out / "e2e.md").write_text(
        "\n".join(
            [
                "# End-to-end benchmark (`make bench-e2e`)",
                "",
                f"{when}: `{command}`",
                "",
                machine_line,
                "",
                "![throughput per stage](e2e.png)",
                "",
                "```text",
                *lines,
                "```",
                "",
                *[f"- {note}" for note in notes],
                "",
            ]
        )
    )
    print(f"chart and table written to {args.out / 'e2e.png'} and {args.out / 'e2e.md'}")


if __name__ == "__main__":
    main()
