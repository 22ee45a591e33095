"""The Helm chart, run: what it renders is started as local processes (no container engine here), and an export
goes through.

``helm template`` renders the chart with local values (the test's Kafka broker, a SQLite catalog and member
store, the SMTP sink, the HTTP receiver, free ports). Then, as the kubelet would, for the migration Job and
each Deployment: the container's ``command`` (an entry point of ``[project.scripts]``, the image's) is started
with exactly the environment the chart gives it (its ConfigMap by ``envFrom``, then ``env``, values from the
Secrets an operator made: here the test's) and nothing of this process's own environment but ``PATH``;
volume mounts are directories of a per-pod root, and a variable naming a path under a mount names the same
path there. The probes are asked at the ports and paths the chart declares. Then an operator's ``exportctl
apply`` through the admin API, a run requested over HTTP, its record followed to ``succeeded`` and every
member at the receiver with the partner's token from the dispatcher's Secret. A wrong command, variable,
port or probe path in the chart fails this test.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet

from devtools.http_receiver import HttpReceiver
from devtools.processes import free_port, wait_until
from devtools.smtp_sink import SmtpSink
from shared.catalog import make_engine
from shared.domain.runs import RunStatus
from shared.querystore.demo_data import create_demo_members
from tests.chart import ROOT, SERVICES, Rendered, render

pytestmark = pytest.mark.e2e

MEMBERS = 2_000
PARTNER_TOKEN = f"chart-partner-{uuid.uuid4().hex}"
MANIFEST = """
kind: ConnectionProfile
name: partner
spec: {{base_url: "{url}", auth: {{type: bearer, token: "env:PARTNER_CHART_TOKEN"}}}}
---
kind: SavedQuery
name: everyone
spec: {{sql: "SELECT id, email, first_name, tier FROM members", key_column: id}}
---
kind: HttpTemplate
name: bulk
spec: {{query: everyone, profile: partner, path: /v1/members, batch_size: 250}}
---
kind: ExportDefinition
name: chart-export
spec:
  query: everyone
  template: bulk
  notifications:
    success: {{enabled: true, recipients: [ops@example.com]}}
"""


def _scripts() -> dict[str, str]:
    import tomllib

    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def local_command(container: dict[str, Any]) -> list[str]:
    """The container's command and args as a local process: its entry point run by this interpreter."""
    [entry_point, *args] = container["command"] + container.get("args", [])
    scripts = _scripts()
    assert entry_point in scripts, f"{entry_point!r} is not an entry point of the image ([project.scripts])"
    module, function = scripts[entry_point].split(":")
    launcher = f"import sys; sys.argv[0] = {entry_point!r}; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", launcher, *args]


@dataclass
class Pod:
    """One replica of a workload, as a local process."""

    name: str
    container: dict[str, Any]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        [port] = [p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number]
        return int(port)

    def healthy(self, kind: str) -> bool:
        return self.probe(kind) == 200

    def probe(self, kind: str) -> int:
        """The status the kubelet would get from the container's ``kind`` probe (0: no connection)."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.log()}")
        get = self.container[f"{kind}Probe"]["httpGet"]
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port(get['port'])}{get['path']}", timeout=5)
        except httpx.TransportError:
            return 0
        # A path the server does not have never becomes healthy: say so now rather than at the deadline. The
        # workers' health server answers /metrics' exposition on any other path: that is no probe answer either.
        where = f"{self.name}: {get['path']} on port {get['port']} ({kind} probe)"
        assert answer.status_code != 404, f"{where}: not served"
        assert "# HELP" not in answer.text, f"{where}: answers metrics, not health"
        return answer.status_code


class LocalKubelet:
    """Starts a rendered pod template's container locally with the environment and files the chart gives it."""

    def __init__(self, rendered: Rendered, secrets: dict[str, dict[str, str]], root: Path) -> None:
        self.config = {c["metadata"]["name"]: c["data"] for c in rendered.of_kind("ConfigMap")}
        self.secrets = secrets
        self.root = root
        self.pods: list[Pod] = []

    def _mounts(self, name: str, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Path]:
        """Each volume mount as a directory of this pod's root, filled like the kubelet fills it."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            directory = self.root / name / mount["mountPath"].lstrip("/")
            directory.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            sources = (
                [{"secret": {**volume["secret"], "name": volume["secret"]["secretName"]}}] if "secret" in volume else []
            )
            sources += volume.get("projected", {}).get("sources", [])
            for source in sources:
                data = self.secrets[source["secret"]["name"]]
                items = source["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (directory / item["path"]).write_text(data[item["key"]])
            mounts[mount["mountPath"]] = directory
        return mounts

    def environment(self, container: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env |= self.config[source["configMapRef"]["name"]]
            else:
                env |= self.secrets[source["secretRef"]["name"]]
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = str(variable["value"])
            elif "secretKeyRef" in variable["valueFrom"]:
                ref = variable["valueFrom"]["secretKeyRef"]
                env[variable["name"]] = self.secrets[ref["name"]][ref["key"]]
            else:
                ref = variable["valueFrom"]["configMapKeyRef"]
                env[variable["name"]] = self.config[ref["name"]][ref["key"]]
        for key, value in env.items():  # a path under a mount is that path in the pod's root
            for mount_path, directory in mounts.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    env[key] = str(directory) + value[len(mount_path.rstrip("/")) :]
        return env

    def start(self, name: str, pod: dict[str, Any]) -> Pod:
        [container] = pod["containers"]
        mounts = self._mounts(name, pod, container)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root / name), "LANG": "C.UTF-8"}
        env |= self.environment(container, mounts)
        log_path = self.root / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                local_command(container), env=env, cwd=self.root / name, stdout=log, stderr=subprocess.STDOUT
            )
        started = Pod(name, container, process, log_path)
        self.pods.append(started)
        return started

    def stop(self) -> dict[str, int | None]:
        for pod in self.pods:
            if pod.process.poll() is None:
                pod.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for pod in self.pods:
            try:
                codes[pod.name] = pod.process.wait(30)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                codes[pod.name] = pod.process.wait()
        return codes


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as running:
        yield running


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def test_the_chart_run_as_processes_exports_end_to_end(
    kafka_bootstrap: str, receiver: HttpReceiver, sink: SmtpSink, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store_url = f"sqlite:///{data / 'members.db'}"
    engine = make_engine(store_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    admin_token = f"chart-admin-{uuid.uuid4().hex}"
    # The Secrets an operator creates before installing (the chart makes none).
    secrets = {
        "chart-catalog": {"url": f"sqlite:///{data / 'catalog.db'}"},
        "chart-members": {"url": store_url},
        "chart-encryption": {"keys": Fernet.generate_key().decode()},
        "chart-admin-tokens": {
            "tokens.yaml": yaml.safe_dump(
                {
                    "tokens": [
                        {"name": "ci", "sha256": hashlib.sha256(admin_token.encode()).hexdigest(), "role": "admin"}
                    ]
                }
            )
        },
        "chart-partner-env": {"token": PARTNER_TOKEN},
    }
    ports = {service: free_port() for service in SERVICES}
    prefix = f"chart{uuid.uuid4().hex[:8]}."
    values = {
        "kafka": {"bootstrapServers": kafka_bootstrap},
        "topics": {"prefix": prefix, "partitions": 2, "replicationFactor": 1, "create": True},
        "catalog": {"existingSecret": "chart-catalog", "key": "url"},
        "queryStore": {"existingSecret": "chart-members", "key": "url"},
        "encryption": {"existingSecret": "chart-encryption", "key": "keys"},
        "adminTokens": {"existingSecret": "chart-admin-tokens", "key": "tokens.yaml"},
        "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none", "sender": "chart@example.com"},
        "config": {
            "logFormat": "json",
            "allowedDestinations": "127.0.0.1",  # the receiver is on loopback, which the SSRF guard refuses
            "extra": {"EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05", "EXPORT_SCHEDULER_TICK_SECONDS": "1"},
        },
        "services": {
            service: {"replicas": 1, "port": ports[service]}
            | (
                {
                    "extraEnv": [
                        {
                            "name": "PARTNER_CHART_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "chart-partner-env", "key": "token"}},
                        }
                    ]
                }
                if service == "dispatcher"
                else {}
            )
            for service in SERVICES
        },
    }
    rendered = render(values=values, tmp_dir=tmp_path)
    kubelet = LocalKubelet(rendered, secrets, tmp_path / "pods")
    try:
        # The pre-install hook first: the services refuse a catalog behind their release.
        [job] = rendered.of_kind("Job")
        migration = kubelet.start("migrations", job["spec"]["template"]["spec"])
        assert migration.process.wait(120) == 0, migration.log()

        pods = {
            service: kubelet.start(service, rendered.pod_specs()[f"member-export-{service}"]) for service in SERVICES
        }
        for service, pod in pods.items():
            for kind in ("startup", "readiness", "liveness"):
                wait_until(partial(pod.healthy, kind), timeout=120, what=f"{service}'s {kind} probe")

        admin_url = f"http://127.0.0.1:{ports['admin']}"
        token_file = tmp_path / "token"
        token_file.write_text(admin_token)
        manifest = tmp_path / "export.yaml"
        manifest.write_text(MANIFEST.format(url=receiver.url))
        applied = subprocess.run(
            [
                *local_command({"command": ["exportctl"]}),
                "apply",
                "-f",
                str(manifest),
                "--api-url",
                admin_url,
                "--token-file",
                str(token_file),
            ],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EXPORTCTL_CONFIG": str(tmp_path / "none.yaml")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert applied.returncode == 0, applied.stderr

        with httpx.Client(
            base_url=f"{admin_url}/api/v1", headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
        ) as api:
            requested = api.post("/export-definitions/chart-export/runs")
            assert requested.status_code == 202, requested.text
            run_id = requested.json()["run_id"]
            record: dict[str, Any] = {}

            def finished() -> bool:
                record.update(api.get(f"/runs/{run_id}").json())
                return RunStatus(record["status"]).is_final  # "extracting" and "dispatching" are not

            wait_until(finished, timeout=180, interval=0.5, what="the run to finish")
        assert record["status"] == "succeeded", (record, {s: p.log() for s, p in pods.items()})
        assert set(receiver.accepted_member_ids()) == set(range(1, MEMBERS + 1))
        tokens = {r.headers["authorization"] for r in receiver.receipts()}
        assert tokens == {f"Bearer {PARTNER_TOKEN}"}  # the dispatcher's Secret reached the partner, nowhere else
        wait_until(
            lambda: any(str(run_id) == m.message["X-Export-Run-Id"] for m in sink.received()),
            timeout=60,
            what="the success email",
        )
        for service, pod in pods.items():  # still live and ready after the work
            assert (pod.probe("liveness"), pod.probe("readiness")) == (200, 200), service
    finally:
        codes = kubelet.stop()
    # Every process exits cleanly on SIGTERM (the migration Job had finished); uvicorn, after its graceful
    # shutdown, re-raises the signal it caught, so the admin API ends "killed by SIGTERM", as the kubelet expects.
    assert codes == dict.fromkeys(codes, 0) | {"admin": codes.get("admin")}, codes
    assert codes["admin"] in (0, -signal.SIGTERM)
