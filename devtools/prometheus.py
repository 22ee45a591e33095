"""Prometheus for the tests: Debian's ``prometheus`` package (``promtool`` and the server), installed with apt when
absent (root only), and a local server on 127.0.0.1 with a temporary configuration and storage.

The package's own service must not start: the install runs under a ``policy-rc.d`` that refuses every service
start (Debian's mechanism, honoured by ``invoke-rc.d`` and ``deb-systemd-invoke``), without the package's
recommends (node exporter and its collectors, more services), and on a systemd host the unit it enabled is
disabled again. The tests run their own server, on a free port, with their own configuration.

    python -m devtools.prometheus     # print where promtool and prometheus are (installing them if needed)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from devtools.prerequisites import MissingPrerequisite, _is_debian_root, apt_install
from devtools.processes import Managed, free_port, wait_until

#: Debian's package; ships /usr/bin/prometheus and /usr/bin/promtool.
PACKAGE = "prometheus"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


@dataclass(frozen=True)
class PrometheusTools:
    """Paths of the two programs."""

    promtool: Path
    prometheus: Path


def _find() -> PrometheusTools | None:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or prometheus is None:
        return None
    return PrometheusTools(Path(promtool), Path(prometheus))


def prometheus_tools() -> PrometheusTools:
    """``promtool`` and ``prometheus``; installed from Debian's package on Debian as root, else explained."""
    found = _find()
    if found is None and _is_debian_root():
        install_without_starting()
        found = _find()
    if found is None:
        raise MissingPrerequisite(
            "the alert-rule and Prometheus tests need promtool and prometheus: install them "
            "(Debian/Ubuntu: apt-get install --no-install-recommends prometheus)"
        )
    return found


def install_without_starting() -> None:
    """``apt-get install`` the package with no service started by it (see the module's docstring)."""
    made_policy = not POLICY_RC_D.exists()  # a container image often has one already: leave it as it is
    if made_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# devtools.prometheus: no service starts during this install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        apt_install("--no-install-recommends", PACKAGE)
    finally:
        if made_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        # The unit was enabled (it would start at the next boot): the package is here for its binaries only.
        subprocess.run(["systemctl", "disable", "--now", "prometheus.service"], check=False, capture_output=True)


def require_prometheus() -> None:
    """The prerequisites step (``python -m devtools.prerequisites``): make sure both programs are here."""
    tools = prometheus_tools()
    print(f"promtool: {tools.promtool}; prometheus: {tools.prometheus}")


class PrometheusServer(Managed):
    """A Prometheus server on 127.0.0.1 and a free port, with ``config`` (a prometheus.yml as a dict; ``rule_files``
    are paths) and its storage in a temporary directory removed on stop."""

    def __init__(self, config: dict[str, Any], work_dir: Path | None = None) -> None:
        self.config = config
        self.port = free_port()
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "prometheus.log"

    def start(self) -> PrometheusServer:
        tools = prometheus_tools()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.work_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        checked = subprocess.run([str(tools.promtool), "check", "config", str(config_file)], capture_output=True)
        if checked.returncode != 0:
            raise ValueError(f"promtool check config: {checked.stdout.decode()}{checked.stderr.decode()}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(tools.prometheus),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.work_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
        wait_until(self._ready, timeout=60, what=f"Prometheus on port {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited ({self.process.returncode}): {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; a query Prometheus refuses raises with its error."""
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def stop(self) -> int | None:
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return code


if __name__ == "__main__":
    require_prometheus()
