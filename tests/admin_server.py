"""The admin API as a real server process for tests: tokens per role, a catalog, Kafka topics."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.processes import free_port, wait_until
from services.admin.bearer_tokens import token_hash
from shared.catalog import CatalogStores, make_engine
from shared.querystore.demo_data import create_demo_members

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
    query_store_url: str

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
    query_store_url = query_store_url or f"sqlite:///{tmp_path / 'members.db'}"
    env = {
        **os.environ,
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EXPORT_TOPIC_PREFIX": prefix,
        "EXPORT_TOPIC_PARTITIONS": "3",
        "EXPORT_CATALOG_URL": catalog_url,
        "EXPORT_ADMIN_HOST": "127.0.0.1",
        "EXPORT_ADMIN_PORT": str(port),
        "EXPORT_ADMIN_TOKENS_FILE": str(tokens_file),
        "EXPORT_QUERY_STORE_URL": query_store_url,
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
        yield AdminServer(url, tokens, log_path, prefix, catalog_url, query_store_url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def admin_servers_by_dialect(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database_factory: Callable[[], str],
    kafka_bootstrap: str,
    members: int,
) -> Iterator[Callable[[str], AdminServer]]:
    """A module's admin servers: ``server("sqlite")`` or ``server("postgresql")``, each started when a test first
    asks for it (a start is 4-5 s) on a catalog of its own and a SQLite member store of ``members`` demo members,
    and stopped when the module's tests are done.

    The tests sharing a server keep their objects apart by names of their own (a per-test tag in each name) and
    scope what they assert on listings to those objects; a test that needs the catalog to itself, or the server's
    settings or environment changed, starts a server of its own (:func:`admin_server`)."""
    started: dict[str, AdminServer] = {}
    with ExitStack() as stack:

        def server(dialect: str) -> AdminServer:
            if dialect not in started:
                directory = tmp_path_factory.mktemp(f"admin-{dialect}")
                store = f"sqlite:///{directory / 'members.db'}"
                engine = make_engine(store)
                create_demo_members(engine, members)
                engine.dispose()
                catalog = (
                    f"sqlite:///{directory / 'catalog.db'}" if dialect == "sqlite" else postgres_database_factory()
                )
                started[dialect] = stack.enter_context(admin_server(directory, catalog, kafka_bootstrap, store))
            return started[dialect]

        yield server
