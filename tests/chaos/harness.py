"""A whole pipeline to break on purpose: its own broker, catalog and member-store PostgreSQL servers, a partner
and an SMTP sink, the four services as processes, and Toxiproxy between the services and the broker, the
member store and the partner.

A scenario requests a run, injects its fault while the run is under way, heals it, and the harness checks
what a user would: every member arrived, a member sent twice only under the same Idempotency-Key, the run
record exact, one email, no service exited, and how long deliveries took to resume after the fault.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import yaml

from devtools.http_receiver import HttpReceiver, Receipt
from devtools.kafka_broker import LocalKafka
from devtools.pipeline import LocalPipeline
from devtools.postgres import LocalPostgres
from devtools.processes import Managed, free_port
from devtools.smtp_sink import SmtpSink
from devtools.toxiproxy import Toxiproxy
from shared.catalog import CatalogStores, make_engine
from shared.domain.runs import RunRecord
from shared.querystore.demo_data import create_demo_members

DEFINITION = "chaos-export"
RECIPIENT = "ops@example.com"


@dataclass
class Outcome:
    """What a user would check after a run that met a fault."""

    scenario: str
    members: int
    received: int = 0
    duplicates: int = 0
    duplicates_under_another_key: int = 0
    status: str = "not recorded"
    delivered: int = 0
    failed: int = 0
    emails: int = 0
    exited: list[str] = field(default_factory=list)
    #: Services whose /readyz said "not ready" during the fault (checked where a scenario watches it).
    unready: list[str] | None = None
    recovery_seconds: float | None = None
    run_seconds: float = 0.0

    @property
    def held(self) -> bool:
        """Every promise kept: all members, duplicates only under their key, the record exact, one email,
        no process exited."""
        return (
            self.received == self.members
            and self.duplicates_under_another_key == 0
            and self.status == "succeeded"
            and self.delivered == self.members
            and self.failed == 0
            and self.emails == 1
            and not self.exited
        )


def run_of(key: str) -> str:
    """The run an Idempotency-Key belongs to: the dispatcher's keys start with the run's id (``<run>:<batch>``,
    ``<run>:<batch>:<first>-<end>`` for a part of a batch)."""
    return key.partition(":")[0]


@dataclass(frozen=True)
class Counted:
    """What a window of deliveries holds for one run: its members received, and the deliveries of members already
    delivered (its own or an earlier run's), of which how many members were sent under another key."""

    received: int
    duplicates: int
    under_another_key: int


class DeliveryLedger:
    """Every member the partner accepted in a session, by run, with the Idempotency-Keys each came under.

    The promise is per run: a member of a run sent twice comes under the same key. Two runs of one definition send
    the same members under keys of their own, and an earlier run's batches can arrive again after that run ended (its
    dispatcher's commit refused, the batches read again at its next assignment: at least once), in the window of a
    later scenario: such a delivery is a duplicate of the earlier run's member, checked against that run's keys, not
    a member of the later run.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, object], set[str]] = defaultdict(set)
        #: The deliveries of the window (each a run's member), and those first delivered in it.
        self._window: list[tuple[str, object]] = []
        self._new: set[tuple[str, object]] = set()

    def open_window(self) -> None:
        """A scenario starts: what arrives from now on is counted for it."""
        self._window, self._new = [], set()

    def record(self, key: str, members: list[object]) -> None:
        """An accepted request: ``members`` (their ids) under ``key``."""
        run = run_of(key)
        for member in members:
            delivery = (run, member)
            if delivery not in self._keys:
                self._new.add(delivery)
            self._keys[delivery].add(key)
            self._window.append(delivery)

    def count(self, run_id: str) -> Counted:
        """The window's deliveries as they count for run ``run_id``."""
        in_window = set(self._window)
        return Counted(
            received=sum(1 for run, _ in in_window if run == run_id),
            duplicates=len(self._window) - len(self._new),
            under_another_key=sum(1 for delivery in in_window if len(self._keys[delivery]) > 1),
        )


class ChaosPipeline(Managed):
    """The pipeline of one chaos session; scenarios run one after another on it (each its own run)."""

    def __init__(
        self, work_dir: Path, members: int, batch_size: int = 250, settings: Mapping[str, str] | None = None
    ) -> None:
        self.work_dir = work_dir
        self.members = members
        self.batch_size = batch_size
        #: ``EXPORT_*`` settings of every service on top of the harness's own.
        self.settings = dict(settings or {})
        self.toxiproxy = Toxiproxy(work_dir / "toxiproxy.log")
        self.kafka_port = free_port()
        self.kafka = LocalKafka(work_dir / "kafka", advertised_port=free_port())
        # Their own temporary directories: the postgres user must reach them (a pytest tmp_path is root's only).
        self.catalog_pg = LocalPostgres()
        self.store_pg = LocalPostgres()
        self.partner = HttpReceiver()
        self.sink = SmtpSink()
        self.services: LocalPipeline | None = None
        self.catalog: CatalogStores | None = None
        self.env: dict[str, str] = {}
        #: Services a scenario killed on purpose (and started again): not counted as exited.
        self.killed: set[str] = set()
        self.probe_ports = {name: free_port() for name in ("scheduler", "extractor", "dispatcher", "notifier")}
        #: Set by a scenario that watches readiness during its fault.
        self.unready: set[str] | None = None
        #: The partner's deliveries of the session, by run; the partner's receipts up to ``_counted`` are in it.
        self.ledger = DeliveryLedger()
        self._counted = 0
        #: The run of the scenario under way (its members are those :meth:`received` counts).
        self._run_id: uuid.UUID | None = None

    # --- set-up ------------------------------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            return self._start()
        except BaseException:
            self.stop()  # nothing left running behind a failed start
            raise

    def _start(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.toxiproxy.start()
        assert self.kafka.advertised_port is not None
        self.toxiproxy.proxy("kafka", f"127.0.0.1:{self.kafka.port}", listen_port=self.kafka.advertised_port)
        self.kafka.start()
        self.catalog_pg.start()
        self.store_pg.start()
        catalog_url = self.catalog_pg.create_database("catalog")
        store_direct = self.store_pg.create_database("members")
        engine = make_engine(store_direct)
        create_demo_members(engine, self.members)
        engine.dispose()
        store_port = self.toxiproxy.proxy("store", f"127.0.0.1:{self.store_pg.port}")
        store_url = store_direct.replace(f":{self.store_pg.port}/", f":{store_port}/")
        self.partner.start()
        partner_port = self.toxiproxy.proxy("partner", f"127.0.0.1:{self.partner.port}")
        self.sink.start()
        self.env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "EXPORT_TOPIC_PREFIX": f"chaos{uuid.uuid4().hex[:6]}.",
            "EXPORT_TOPIC_PARTITIONS": "3",
            "EXPORT_CATALOG_URL": catalog_url,
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(self.sink.port),
            "EXPORT_METRICS_PORT": "0",
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.2",
            "EXPORT_LOG_LEVEL": "INFO",
            **self.settings,
        }
        self._exportctl("db", "upgrade")
        manifest = self.work_dir / "chaos.yaml"
        manifest.write_text(yaml.safe_dump_all(self._manifest(f"http://127.0.0.1:{partner_port}"), sort_keys=False))
        self._exportctl("apply", "-f", str(manifest))
        self.catalog = CatalogStores.from_url(catalog_url)
        service_env = {name: {"EXPORT_METRICS_PORT": str(port)} for name, port in self.probe_ports.items()}
        self.services = LocalPipeline(self.env, self.work_dir / "logs", service_env=service_env).start()
        return self

    def _manifest(self, partner_url: str) -> list[dict[str, object]]:
        return [
            {"kind": "ConnectionProfile", "name": "partner", "spec": {"base_url": partner_url}},
            {
                "kind": "SavedQuery",
                "name": "all-members",
                "spec": {"sql": "SELECT id, email, first_name, tier, points FROM members", "key_column": "id"},
            },
            {
                "kind": "HttpTemplate",
                "name": "members-bulk",
                "spec": {
                    "query": "all-members",
                    "profile": "partner",
                    "path": "/v1/members",
                    "batch_size": self.batch_size,
                },
            },
            {
                "kind": "ExportDefinition",
                "name": DEFINITION,
                "spec": {
                    "query": "all-members",
                    "template": "members-bulk",
                    "notifications": {
                        "success": {"enabled": True, "recipients": [RECIPIENT]},
                        "error": {"enabled": True, "recipients": [RECIPIENT]},
                    },
                },
            },
        ]

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
        if self.catalog is not None:
            self.catalog.close()
        for part in (self.sink, self.partner, self.store_pg, self.catalog_pg, self.kafka, self.toxiproxy):
            try:
                part.close()  # and the directory it made for itself: two PostgreSQL clusters' ~96 MB a run
            except Exception as exc:  # noqa: BLE001 - stop the rest all the same
                print(f"stopping {type(part).__name__} failed: {exc}", file=sys.stderr)

    def _exportctl(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"exportctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    # --- during a scenario -------------------------------------------------------------------------------------

    def request_run(self) -> uuid.UUID:
        """Request a run of the chaos definition (as an operator would) and return its id. What the partner accepts
        from now on is counted for this run's scenario (an earlier run's batches arriving again included)."""
        self.ledger.open_window()
        self._run_id = None
        self._count_receipts(clear=True)
        self.unready = None
        output = self._exportctl("run", DEFINITION)
        found = re.search(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", output)
        if found is None:
            raise RuntimeError(f"exportctl run printed no run id: {output!r}")
        self._run_id = uuid.UUID(found.group(1))
        return self._run_id

    def _count_receipts(self, *, clear: bool = False) -> None:
        """Enter the partner's accepted requests not counted yet in the ledger (then forget them all: ``clear``)."""
        with self.partner.state.lock:
            receipts = self.partner.state.receipts[self._counted :]
            if clear:
                self.partner.state.receipts.clear()
            self._counted = 0 if clear else self._counted + len(receipts)
        for receipt in receipts:
            if receipt.status < 300:
                self.ledger.record(receipt.headers.get("idempotency-key", ""), [m.get("id") for m in receipt.members])

    def _of_this_run(self, receipt: Receipt) -> bool:
        return self._run_id is not None and run_of(receipt.headers.get("idempotency-key", "")) == str(self._run_id)

    def ready(self, service: str) -> bool:
        """What the service's /readyz says (a service not answering is not ready)."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.probe_ports[service]}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def watch_readiness(self, seconds: float) -> None:
        """For ``seconds`` (the fault lasting), note every service that says it is not ready."""
        self.unready = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.unready |= {name for name in self.probe_ports if not self.ready(name)}
            time.sleep(0.5)

    def received(self) -> int:
        """Members of the scenario's run the partner accepted so far (a member sent twice counts twice)."""
        return sum(len(r.members) for r in self.partner.receipts() if r.status < 300 and self._of_this_run(r))

    def run(self, run_id: uuid.UUID) -> RunRecord | None:
        assert self.catalog is not None
        try:
            return self.catalog.runs.get_run(run_id)
        except Exception:  # noqa: BLE001 - the catalog may be the thing the scenario stopped
            return None

    def wait(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait for ``condition`` (checked every 20 ms) or raise naming ``what``; a service that exits
        unexpectedly fails the wait at once."""
        deadline = time.monotonic() + timeout
        while not condition():
            if exited := self.exited():
                raise RuntimeError(f"service(s) {', '.join(exited)} exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.02)

    def exited(self) -> list[str]:
        assert self.services is not None
        return [name for name in self.services.dead() if name not in self.killed]

    def kill_and_restart(self, service: str) -> None:
        """SIGKILL one service, then start it again (as Kubernetes would restart its pod)."""
        assert self.services is not None
        self.killed.add(service)
        self.services.kill(service)
        self.services.start_service(service)
        self.killed.discard(service)

    def outcome(self, scenario: str, run_id: uuid.UUID, *, started: float, healed: float | None) -> Outcome:
        """Wait for the run to be final and its email sent, then check every promise."""
        self.wait(lambda: (r := self.run(run_id)) is not None and r.status.is_final, timeout=600, what="the run's end")
        run_seconds = time.monotonic() - started
        self.wait(lambda: self._emails(run_id) >= 1, timeout=120, what="the run's email")
        record = self.run(run_id)
        assert record is not None
        self._count_receipts()
        counted = self.ledger.count(str(run_id))
        outcome = Outcome(
            scenario=scenario,
            members=self.members,
            received=counted.received,
            duplicates=counted.duplicates,
            duplicates_under_another_key=counted.under_another_key,
            status=record.status.value,
            delivered=record.delivered,
            failed=record.failed,
            emails=self._emails(run_id),
            exited=self.exited(),
            unready=None if self.unready is None else sorted(self.unready),
            run_seconds=run_seconds,
        )
        if healed is not None:
            outcome.recovery_seconds = self._resumed_after(healed)
        return outcome

    def _emails(self, run_id: uuid.UUID) -> int:
        return sum(1 for mail in self.sink.received() if str(run_id) in mail.text())

    def _resumed_after(self, healed_wall: float) -> float | None:
        """Seconds from the fault's end to the partner's next accepted request of the scenario's run (None: all had
        arrived before)."""
        after = [
            r.received_at
            for r in self.partner.receipts()
            if r.status < 300 and self._of_this_run(r) and r.received_at >= healed_wall
        ]
        return round(min(after) - healed_wall, 2) if after else None
