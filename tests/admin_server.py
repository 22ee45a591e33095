"""The admin API as a real server process for tests: tokens per role, a catalog, Kafka topics."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from devtools.processes import free_port, wait_until
from services.admin.bearer_tokens import token_hash
from shared.catalog import CatalogStores

#: One token per role, plus an operator, an editor and a viewer scoped to the "emea" business unit.
TOKENS = {
    "viewer": ("viewer", []),
    "editor": ("editor", []),
    "operator": ("operator", []),
    "admin": ("admin", []),
    "emea-operator": ("operator", ["emea"]),
    "emea-editor": ("editor", ["emea"]),
    "emea-viewer": ("viewer", ["emea"]),
}


@dataclass
class AdminServer:
    url: str
    tokens: dict[str, str]
    log_path: Path
    topic_prefix: str
    catalog_url: str

    def client(self, who: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def admin_server(
    tmp_path: Path,
    catalog_url: str,
    kafka_bootstrap: str,
    query_store_url: str = "",
    topic_prefix: str = "",
    allowed_destinations: str = "127.0.0.1",
) -> Iterator[AdminServer]:
    """The admin API on ``catalog_url`` (brought to the current schema first: the service refuses an old one).

    ``allowed_destinations`` is its SSRF guard's allowlist (``EXPORT_ALLOWED_DESTINATIONS``, checked when
    profiles are saved): 127.0.0.1 by default, where tests' partner stubs listen.
    """
    CatalogStores.from_url(catalog_url, migrate=True).close()
    tokens = {who: f"tok-{who}-{uuid.uuid4().hex}" for who in TOKENS}
    entries = [
        {"name": who, "sha256": token_hash(tokens[who]), "role": role, "business_units": units}
        for who, (role, units) in TOKENS.items()
    ]
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(yaml.safe_dump({"tokens": entries}))
    port = free_port()
    prefix = topic_prefix or f"a{uuid.uuid4().hex[:10]}."
    env = {
        **os.environ,
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EXPORT_TOPIC_PREFIX": prefix,
        "EXPORT_TOPIC_PARTITIONS": "3",
        "EXPORT_CATALOG_URL": catalog_url,
        "EXPORT_ADMIN_HOST": "127.0.0.1",
        "EXPORT_ADMIN_PORT": str(port),
        "EXPORT_ADMIN_TOKENS_FILE": str(tokens_file),
        "EXPORT_QUERY_STORE_URL": query_store_url or f"sqlite:///{tmp_path / 'members.db'}",
        "EXPORT_ALLOWED_DESTINATIONS": allowed_destinations,
        "EXPORT_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "admin.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.admin"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the admin API exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=60, what="the admin API")
        yield AdminServer(url, tokens, log_path, prefix, catalog_url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
