"""Run the four services as real subprocesses (the demo and the end-to-end tests use this)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools.processes import Managed

SERVICES = ("scheduler", "extractor", "dispatcher", "notifier")


class LocalPipeline(Managed):
    """The services, each ``python -m services.<name>`` with ``env`` added to this process's environment.

    ``service_env`` adds variables for one service only (e.g. its metrics port); ``modules`` runs a service from
    another module than ``services.<name>`` (a test's entry point giving the service a test double, e.g. a
    clock). Each service's log goes to ``<log_dir>/<name>.log``.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        services: tuple[str, ...] = SERVICES,
        service_env: dict[str, dict[str, str]] | None = None,
        modules: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.env = {**os.environ, **env}
        #: The services' working directory (None: this process's): ``python -m`` imports from there first.
        self.cwd = cwd
        self.log_dir = log_dir
        self.services = services
        self.service_env = service_env or {}
        self.modules = modules or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> LocalPipeline:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.services:
            self.start_service(name)
        return self

    def start_service(self, name: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", self.modules.get(name, f"services.{name}")],
                env={**self.env, **self.service_env.get(name, {})},
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would."""
        process = self.processes[name]
        process.kill()
        process.wait()

    def dead(self) -> list[str]:
        """The services whose process has exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every service, wait for it, and return the exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes
