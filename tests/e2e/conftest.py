"""One pipeline of four real service processes for the e2e module: real Kafka, HTTP, SMTP, SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.http_receiver import HttpReceiver
from devtools.pipeline import SERVICES, LocalPipeline
from devtools.processes import free_port, wait_until
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores, make_engine
from shared.querystore.demo_data import create_demo_members
from shared.topics import Topics

MEMBERS = 10_000

MANIFEST = """
kind: ConnectionProfile
name: good-partner
spec: {{base_url: "{good}", auth: {{type: bearer, token: "env:PARTNER_E2E_TOKEN"}}}}
---
kind: ConnectionProfile
name: strict-partner
spec: {{base_url: "{strict}"}}
---
kind: SavedQuery
name: all-members
spec: {{sql: "SELECT id, email, first_name, tier, points FROM members", key_column: id}}
---
kind: SavedQuery
name: first-hundred
spec: {{sql: "SELECT id, email FROM members WHERE id <= 100", key_column: id}}
---
kind: HttpTemplate
name: good-bulk
spec: {{query: all-members, profile: good-partner, path: /v1/members, batch_size: 500}}
---
kind: HttpTemplate
name: good-small
spec: {{query: first-hundred, profile: good-partner, path: /v1/members, batch_size: 50}}
---
kind: HttpTemplate
name: strict-small
spec: {{query: first-hundred, profile: strict-partner, path: /v1/members, batch_size: 50}}
---
kind: HttpTemplate
name: strict-bulk
spec: {{query: all-members, profile: strict-partner, path: /v1/members, batch_size: 500}}
---
kind: ExportDefinition
name: to-good-partner
spec:
  query: all-members
  template: good-bulk
  notifications:
    success: {{enabled: true, recipients: [ops@example.com, crm@example.com]}}
    error: {{enabled: true, recipients: [oncall@example.com]}}
---
kind: ExportDefinition
name: small-to-good-partner
spec:
  query: first-hundred
  template: good-small
  notifications:
    success: {{enabled: true, recipients: [ops@example.com]}}
---
kind: ExportDefinition
name: small-to-strict-partner
spec:
  query: first-hundred
  template: strict-small
---
kind: ExportDefinition
name: to-strict-partner
spec:
  query: all-members
  template: strict-bulk
  notifications:
    success: {{enabled: true, recipients: [ops@example.com]}}
    error: {{enabled: true, recipients: [oncall@example.com]}}
"""

SECRET_TOKEN = "e2e-s3cret-token-value"


@dataclass
class Pipeline:
    env: dict[str, str]
    topics: Topics
    bootstrap: str
    catalog: CatalogStores
    good: HttpReceiver
    strict: HttpReceiver
    sink: SmtpSink
    services: LocalPipeline
    work_dir: Path
    dispatcher_metrics_port: int
    #: Each service's /metrics port.
    metrics_ports: dict[str, int]

    def exportctl(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop_services(self, *services: str) -> None:
        """Stop services with SIGTERM, as a rollout does: each must exit cleanly."""
        for service in services:
            self.services.processes[service].send_signal(signal.SIGTERM)
        for service in services:
            assert self.services.processes[service].wait(60) == 0, self.services.log(service)[-3000:]

    def start_services(self, changes: dict[str, dict[str, str]]) -> None:
        """Start stopped services again, each with its ``changes`` added to its environment; wait until all are
        ready."""
        for service, env in changes.items():
            self.services.service_env[service] = {**self.services.service_env.get(service, {}), **env}
            self.services.start_service(service)

        def ready(service: str) -> bool:
            try:
                url = f"http://127.0.0.1:{self.metrics_ports[service]}/readyz"
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(lambda: all(ready(s) for s in changes), timeout=90, what=f"the restarted {', '.join(changes)} ready")


@pytest.fixture(scope="module")
def pipeline_settings() -> dict[str, str]:
    """Settings (``EXPORT_*``) a test module gives its pipeline's services on top of the defaults: override it."""
    return {}


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, pipeline_settings: dict[str, str]
) -> Iterator[Pipeline]:
    work_dir = tmp_path_factory.mktemp("e2e")
    store_url = f"sqlite:///{work_dir / 'members.db'}"
    engine = make_engine(store_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    with HttpReceiver() as good, HttpReceiver(reject_status=400) as strict, SmtpSink() as sink:
        env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EXPORT_TOPIC_PREFIX": prefix,
            "EXPORT_TOPIC_PARTITIONS": "3",
            "EXPORT_CATALOG_URL": f"sqlite:///{work_dir / 'catalog.db'}",
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(sink.port),
            "EXPORT_METRICS_PORT": "0",
            # The receivers listen on loopback, which the SSRF guard refuses unless allowed.
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05",
            "PARTNER_E2E_TOKEN": SECRET_TOKEN,
            "EXPORTCTL_CONFIG": str(work_dir / "no-exportctl-config.yaml"),  # never the developer's contexts
            **pipeline_settings,
        }
        manifest = work_dir / "exports.yaml"
        manifest.write_text(MANIFEST.format(good=good.url, strict=strict.url))
        upgraded = subprocess.run(
            [sys.executable, "-m", "shared.cli", "db", "upgrade"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "apply", "-f", str(manifest)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        catalog = CatalogStores.from_url(env["EXPORT_CATALOG_URL"], migrate=True)
        metrics_ports = {name: free_port() for name in SERVICES}
        service_env = {name: {"EXPORT_METRICS_PORT": str(port)} for name, port in metrics_ports.items()}
        with LocalPipeline(env, work_dir / "logs", service_env=service_env) as services:
            yield Pipeline(
                env,
                Topics(prefix),
                kafka_bootstrap,
                catalog,
                good,
                strict,
                sink,
                services,
                work_dir,
                metrics_ports["dispatcher"],
                metrics_ports,
            )
            exit_codes = services.stop()
        catalog.close()
    assert exit_codes == dict.fromkeys(services.services, 0), "services should stop cleanly on SIGTERM"
