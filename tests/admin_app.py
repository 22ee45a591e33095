"""The admin API in-process for tests: the real app (``create_app``) over real SQLite stores, a member store of
demo members, a publisher that records, no dead letters, and one token per role (plus business-unit-scoped ones).

No server, no Kafka: for the API's contract (OpenAPI, problems, parsing) and Schemathesis over ASGI.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from services.admin.app import create_app
from services.admin.bearer_tokens import TokenEntry, TokenStore, token_hash
from services.admin.dependencies import AdminContext, DeadLetterReplays
from shared.application.actors import Role
from shared.catalog import CatalogStores, make_engine
from shared.domain.destinations import DestinationPolicy
from shared.events import AnyRunEvent, DeadLetter, Priority, RunRequested
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members

with warnings.catch_warnings():
    # Starlette 1.x would rather drive its TestClient with httpx2; httpx (installed) works the same.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

#: Who holds a token: role and business units (empty: all of them).
TOKENS: dict[str, tuple[Role, list[str]]] = {
    "admin": (Role.ADMIN, []),
    "editor": (Role.EDITOR, []),
    "operator": (Role.OPERATOR, []),
    "viewer": (Role.VIEWER, []),
    "emea-admin": (Role.ADMIN, ["emea"]),
    "emea-viewer": (Role.VIEWER, ["emea"]),
}


@dataclass
class RecordingPublisher:
    """Keeps what would be published (the API is tested, not Kafka)."""

    run_requests: list[RunRequested] = field(default_factory=list)
    run_events: list[AnyRunEvent] = field(default_factory=list)

    def publish_run_request(self, request: RunRequested) -> None:
        self.run_requests.append(request)

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        self.run_events.extend(events)

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        return None


class NoDeadLetters:
    """An empty dead-letter topic (the API is tested, not Kafka): a replay is a 422 ``nothing-to-replay``."""

    def dead_letters(self) -> list[DeadLetter]:
        return []


@dataclass
class InProcessApi:
    app: FastAPI
    publisher: RecordingPublisher
    tokens: dict[str, str]

    def headers(self, who: str | None = "admin") -> dict[str, str]:
        """The Authorization header of ``who`` (none for None)."""
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    @contextmanager
    def client(self, who: str | None = "admin") -> Iterator[TestClient]:
        with TestClient(self.app, headers=self.headers(who), raise_server_exceptions=False) as client:
            yield client


@contextmanager
def in_process_api(
    directory: Path,
    *,
    members: int = 25,
    catalog_url: str | None = None,
    migrated_catalog: Callable[[str], CatalogStores] | None = None,
) -> Iterator[InProcessApi]:
    """The admin API over SQLite stores in ``directory`` (or the catalog at ``catalog_url``); every host resolves
    to a public address.

    The catalog is migrated here, unless ``migrated_catalog`` (the fixture of ``tests/conftest.py``) is given: then
    its database must be empty (a SQLite file not yet made) and it is a copy of the session's migrated template."""
    store_url = f"sqlite:///{directory / 'members.db'}"
    engine = make_engine(store_url)
    create_demo_members(engine, members)
    engine.dispose()
    url = catalog_url or f"sqlite:///{directory / 'catalog.db'}"
    stores = migrated_catalog(url) if migrated_catalog else CatalogStores.from_url(url, migrate=True)
    reader = functools.cache(lambda: MemberReader.from_url(store_url, timeout_seconds=5))
    tokens = {who: f"tok-{who}-" + "7" * 40 for who in TOKENS}
    entries = [
        TokenEntry(name=who, sha256=token_hash(tokens[who]), role=role, business_units=units)
        for who, (role, units) in TOKENS.items()
    ]
    publisher = RecordingPublisher()
    context = AdminContext(
        definitions=stores.definitions,
        runs=stores.runs,
        audit=stores.audit,
        attempts=stores.attempts,
        deliveries=stores.deliveries,
        retries=stores.retries,
        tokens=TokenStore(entries),
        publisher=publisher,
        members=reader,
        destinations=DestinationPolicy.parse(""),
        # The SSRF guard runs, and no DNS query leaves the machine.
        resolve_host=lambda host: ["93.184.216.34"],
        replays=DeadLetterReplays(NoDeadLetters, 900_000),
    )
    try:
        yield InProcessApi(create_app(context), publisher, tokens)
    finally:
        reader().close()
        stores.close()


#: A profile, a query, a template and a definition (in that order), as bodies of their POST.
SEED_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    (
        "connection-profiles",
        {
            "name": "partner",
            "label": "Partner API",
            "base_url": "https://partner.example.com/v2",
            "auth": {"type": "basic", "username": "exporter", "password": "s3cr3t-partner-password"},
            "rate_limit": {"requests_per_second": 20, "burst": 5},
        },
    ),
    (
        "saved-queries",
        {
            "name": "gold",
            "label": "Gold members",
            "sql": "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier",
            "parameters": {"tier": {"type": "string", "default": "gold"}},
        },
    ),
    (
        "http-templates",
        {
            "name": "upsert",
            "label": "Upsert",
            "query": "gold",
            "profile": "partner",
            "path": "/members",
            "batch_size": 2,
        },
    ),
    (
        "export-definitions",
        {
            "name": "nightly",
            "label": "Nightly gold",
            "business_unit": "emea",
            "query": "gold",
            "template": "upsert",
            "schedule": {"enabled": True, "repeat": {"every": "day", "time": "02:00"}, "from": "2026-01-01"},
            "notifications": {"error": {"enabled": True, "recipients": ["ops@example.com"]}},
        },
    ),
]


def seed(client: TestClient) -> None:
    """Create :data:`SEED_OBJECTS` through the API (the client holds an admin token)."""
    for collection, body in SEED_OBJECTS:
        answer = client.post(f"/api/v1/{collection}", json=body)
        assert answer.status_code == 201, answer.text


@contextmanager
def seeded_api(
    tmp_path: Path, database_url: str, migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[InProcessApi]:
    """An in-process admin API on a migrated catalog at ``database_url``, holding :data:`SEED_OBJECTS`."""
    with (
        in_process_api(tmp_path, catalog_url=database_url, migrated_catalog=migrated_catalog) as api,
        api.client() as client,
    ):
        seed(client)
        yield api


def refused_writing_nothing(api: InProcessApi, method: str, path: str, body: dict[str, Any]) -> Any:
    """The answer to ``method /api/v1/<path>`` with ``body`` (as admin), asserted a 422 problem that wrote nothing:
    the audit log as it was, the seed's definition ``nightly`` without parameters, no run requested."""
    with api.client() as client:
        audit_before = client.get("/api/v1/audit").json()
        answer = client.request(method, f"/api/v1/{path}", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert client.get("/api/v1/audit").json() == audit_before  # nothing written
        assert client.get("/api/v1/export-definitions/nightly").json()["parameters"] == {}
    assert api.publisher.run_requests == []  # no run requested
    return answer
