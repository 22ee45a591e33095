"""Toxiproxy (Shopify's fault-injecting TCP proxy) for the chaos suite: built once from the Go module proxy into
the cache directory, started on 127.0.0.1, driven through its HTTP API.

Each dependency the services reach (the broker, a database, the partner) gets a proxy; a scenario adds
*toxics* to it (latency, a bandwidth limit, connections cut after some bytes) or disables it (the dependency
unreachable: connections refused and the open ones closed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from devtools.kafka_broker import CACHE_DIR
from devtools.prerequisites import apt_install, move_into_place
from devtools.processes import Managed, free_port, port_open, wait_until

#: The module and version built; ``go install`` verifies it against the Go checksum database.
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"
BINARY = CACHE_DIR / "bin" / "toxiproxy-server-2.5.0"


def toxiproxy_binary() -> Path:
    """The toxiproxy server binary, built with ``go install`` the first time (Debian's Go when none is here)."""
    if BINARY.exists():
        return BINARY
    if shutil.which("go") is None:
        apt_install("golang-go")
    with tempfile.TemporaryDirectory(prefix="toxiproxy-build-") as build:
        env = {**os.environ, "GOBIN": build, "GOFLAGS": "-mod=mod"}
        subprocess.run(["go", "install", TOXIPROXY_MODULE], check=True, env=env, capture_output=True)
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        move_into_place(Path(build) / "server", BINARY)
    return BINARY


class Toxiproxy(Managed):
    """A toxiproxy server owned by this object; :meth:`proxy` opens a proxy to an upstream ``host:port``."""

    def __init__(self, log_file: Path) -> None:
        self.api_port = free_port()
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10)

    def start(self) -> Toxiproxy:
        binary = toxiproxy_binary()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-host", "127.0.0.1", "-port", str(self.api_port)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(lambda: port_open(self.api_port), timeout=30, what="toxiproxy's API")
        return self

    def stop(self) -> None:
        self.api.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def proxy(self, name: str, upstream: str, listen_port: int | None = None) -> int:
        """Open a proxy named ``name`` to ``upstream``; return the port it listens on (127.0.0.1)."""
        port = listen_port or free_port()
        self._call(
            "POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream, "enabled": True}
        )
        return port

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disable a proxy (its dependency unreachable: connections refused, open ones closed) or enable it."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(self, proxy: str, toxic: str, kind: str, attributes: dict[str, Any], **options: Any) -> None:
        """Add a toxic (``latency``, ``bandwidth``, ``limit_data``, ``reset_peer``...) named ``toxic``;
        ``options``: ``stream`` (``downstream`` by default) and ``toxicity`` (the share of connections)."""
        self._call(
            "POST", f"/proxies/{proxy}/toxics", {"name": toxic, "type": kind, "attributes": attributes, **options}
        )

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        response = self.api.request(method, path, json=body)
        if response.status_code >= 300:
            raise RuntimeError(f"toxiproxy {method} {path}: {response.status_code} {response.text}")
