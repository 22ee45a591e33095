"""``make up``: the whole local stack with demo data, kept running for the web console until Ctrl-C.

Starts what ``make demo`` starts (Kafka unless ``EXPORT_KAFKA_BOOTSTRAP_SERVERS`` names a cluster, an HTTP
receiver, an SMTP sink, demo members in SQLite, the demo manifest and a few more demo exports, the four
services) plus the admin API, and prints the console's URL and a demo token per role. The browser tests
of the console (tests/browser) run against this same stack.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from devtools.http_receiver import HttpReceiver
from devtools.kafka_broker import REPO_ROOT, LocalKafka
from devtools.pipeline import LocalPipeline
from devtools.processes import Managed, free_port, wait_until
from devtools.smtp_sink import SmtpSink
from services.admin.bearer_tokens import token_hash
from shared.catalog import make_engine
from shared.querystore.demo_data import create_demo_members

DEMO_MANIFEST = REPO_ROOT / "deploy" / "local" / "demo" / "demo-export.yaml"
#: More demo objects beside the demo manifest's, so that the console's lists, filters and steps have something
#: to show: a query with parameters, a second operation, definitions of several units, priorities, schedules.
CONSOLE_DEMO = """
kind: SavedQuery
name: members-of-tier
spec:
  label: Members of a tier
  description: Members of one loyalty tier with at least some points.
  sql: SELECT id, email, first_name, tier, points, locale FROM members WHERE tier = :tier AND points >= :min_points
  key_column: id
  parameters:
    tier: {type: string, required: true}
    min_points: {type: integer, default: 0}
---
kind: HttpTemplate
name: tier-upsert
spec:
  label: Tier upsert
  query: members-of-tier
  profile: demo-receiver
  method: PUT
  path: /v1/tiers/members
  json_body:
    members:
      $each: members
      as: m
      item: {id: "{{ m.id }}", email: "{{ m.email }}", tier: "{{ m.tier }}", points: "{{ m.points }}"}
  batch_size: 200
---
kind: ExportDefinition
name: nightly-gold
spec:
  label: Nightly gold members
  business_unit: france
  priority: high
  query: members-of-tier
  parameters: {tier: gold, min_points: 1000}
  template: tier-upsert
  schedule: {enabled: true, timezone: Europe/Paris, repeat: {every: day, time: "02:00"}, from: 2026-01-01}
  notifications:
    error: {enabled: true, recipients: [oncall@example.com]}
---
kind: ExportDefinition
name: weekly-silver
spec:
  label: Weekly silver members
  business_unit: emea
  priority: low
  query: members-of-tier
  parameters: {tier: silver}
  template: tier-upsert
  schedule: {enabled: true, timezone: America/New_York, repeat: {every: week, weekday: mon, time: "06:30"}}
---
kind: ExportDefinition
name: christmas-bronze
spec:
  label: Christmas bronze campaign
  business_unit: emea
  query: members-of-tier
  parameters: {tier: bronze}
  template: tier-upsert
  schedule: {enabled: false, timezone: Europe/London, once: {date: 2026-12-24, time: "18:00"}}
"""
ROLES = ("admin", "editor", "operator", "viewer")


@dataclass
class ConsoleStack(Managed):
    """Kafka (unless ``bootstrap`` is given), receiver, SMTP sink, demo data, the services and the admin API."""

    work_dir: Path
    bootstrap: str | None = None
    members: int = 10_000
    port: int = 0
    #: One random token per role, made at start.
    tokens: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    receiver: HttpReceiver | None = None
    sink: SmtpSink | None = None
    #: Whether Kafka was given (``bootstrap`` or ``EXPORT_KAFKA_BOOTSTRAP_SERVERS``): then it is neither started nor
    #: stopped here.
    kafka_given: bool = False
    _stack: ExitStack = field(default_factory=ExitStack)
    _admin: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def console_url(self) -> str:
        return f"{self.url}/console"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    def start(self) -> ConsoleStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = self.bootstrap or os.environ.get("EXPORT_KAFKA_BOOTSTRAP_SERVERS")
        self.kafka_given = bool(bootstrap)
        if not bootstrap:
            bootstrap = self._stack.enter_context(LocalKafka(self.work_dir / "kafka")).bootstrap_servers
        self.receiver = self._stack.enter_context(HttpReceiver())
        self.sink = self._stack.enter_context(SmtpSink(directory=self.work_dir / "mail"))
        store_url = f"sqlite:///{self.work_dir / 'members.db'}"
        engine = make_engine(store_url)
        create_demo_members(engine, self.members)
        engine.dispose()
        self.tokens = {role: f"demo-{role}-{secrets.token_urlsafe(24)}" for role in ROLES}
        tokens_file = self.work_dir / "tokens.yaml"
        entries = [
            {"name": f"demo-{role}", "sha256": token_hash(token), "role": role} for role, token in self.tokens.items()
        ]
        tokens_file.write_text(yaml.safe_dump({"tokens": entries}))
        self.port = self.port or free_port()
        self.env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EXPORT_CATALOG_URL": f"sqlite:///{self.work_dir / 'catalog.db'}",
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(self.sink.port),
            "EXPORT_METRICS_PORT": "0",
            # The receiver listens on loopback, which the SSRF guard refuses unless allowed.
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_TOPIC_PREFIX": f"up{int(time.time())}{secrets.token_hex(2)}.",
            "EXPORT_TOPIC_PARTITIONS": "3",
            "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05",
            "PARTNER_DEMO_RECEIVER_TOKEN": "demo-token-not-a-real-secret",  # env: references need PARTNER_
            "EXPORT_ADMIN_HOST": "127.0.0.1",
            "EXPORT_ADMIN_PORT": str(self.port),
            "EXPORT_ADMIN_TOKENS_FILE": str(tokens_file),
            # Plain http on 127.0.0.1: a Secure cookie would not come back.
            "EXPORT_CONSOLE_SECURE_COOKIES": "false",
            "EXPORT_CONSOLE_SESSION_KEY": secrets.token_urlsafe(32),
            "EXPORTCTL_CONFIG": str(self.work_dir / "no-exportctl-config.yaml"),  # never the developer's contexts
        }
        child_env = {**os.environ, **self.env}
        exportctl = [sys.executable, "-m", "shared.cli"]
        subprocess.run([*exportctl, "db", "upgrade"], env=child_env, check=True, capture_output=True)
        demo = self.work_dir / "console-demo.yaml"
        demo.write_text(CONSOLE_DEMO)
        apply = [
            *exportctl,
            "apply",
            "-f",
            str(DEMO_MANIFEST),
            "-f",
            str(demo),
            "--var",
            f"RECEIVER_URL={self.receiver.url}",
        ]
        applied = subprocess.run(apply, env=child_env, capture_output=True, text=True)
        if applied.returncode != 0:
            raise RuntimeError(f"applying the demo objects failed: {applied.stderr}")
        self._stack.enter_context(LocalPipeline(self.env, self.log_dir))
        with (self.log_dir / "admin.log").open("ab") as log:
            self._admin = subprocess.Popen(
                [sys.executable, "-m", "services.admin"], env=child_env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._admin_ready, timeout=60, what="the admin API")

    def _admin_ready(self) -> bool:
        assert self._admin is not None
        if self._admin.poll() is not None:
            log = (self.log_dir / "admin.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the admin API exited: {log}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self._admin is not None and self._admin.poll() is None:
            self._admin.terminate()
            try:
                self._admin.wait(15)
            except subprocess.TimeoutExpired:
                self._admin.kill()
                self._admin.wait()
        self._stack.close()


def summary(stack: ConsoleStack, work_dir: Path) -> list[str]:
    """What ``make up`` prints once the stack runs: where things are, and the lines to paste into a shell for
    exportctl, through the admin API or on the catalog directly (its Kafka, topic prefix and stores)."""
    assert stack.receiver is not None
    assert stack.sink is not None
    lines = [f"  console:        {stack.console_url}", f"  admin token:    {stack.tokens['admin']}"]
    lines += [f"  {role + ' token:':<15} {stack.tokens[role]}" for role in ("editor", "operator", "viewer")]
    lines += [
        f"  admin API:      {stack.url}/docs",
        f"  HTTP receiver:  {stack.receiver.url}   (--var RECEIVER_URL={stack.receiver.url})",
        f"  SMTP sink:      127.0.0.1:{stack.sink.port} (mail in {work_dir / 'mail'})",
        f"  logs:           {stack.log_dir}",
        "",
        "  exportctl through the admin API (as the admin; any token above works, with its role):",
        f"    export EXPORT_API_URL={shlex.quote(stack.url)} EXPORT_API_TOKEN={shlex.quote(stack.tokens['admin'])}",
        "  exportctl on the catalog directly (no EXPORT_API_URL; the stack's Kafka, topics and stores):",
    ]
    direct = (
        "EXPORT_CATALOG_URL",
        "EXPORT_QUERY_STORE_URL",
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS",
        "EXPORT_TOPIC_PREFIX",
        "EXPORT_ALLOWED_DESTINATIONS",  # the receiver is on 127.0.0.1, which profiles may not name without it
    )
    lines += [f"    export {name}={shlex.quote(stack.env[name])}" for name in direct]
    return lines


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=8080, help="the admin API's (and the console's) port")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".local" / "up")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    _say("starting Kafka (unless EXPORT_KAFKA_BOOTSTRAP_SERVERS is set), receiver, SMTP sink, services, admin API")
    stopping = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    with ConsoleStack(args.dir, members=args.members, port=args.port) as stack:
        assert stack.receiver is not None
        assert stack.sink is not None
        print()
        print("\n".join(summary(stack, args.dir)))
        print()
        _say("running; Ctrl-C stops everything")
        signal.signal(signal.SIGTERM, interrupted)
        try:
            while not stopping:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        _say(f"stopping the admin API, services, receiver, SMTP sink{'' if stack.kafka_given else ' and Kafka'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
