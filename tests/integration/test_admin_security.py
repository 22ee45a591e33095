"""The admin API as an attacker with each role would try it: business-unit scope over everything a
definition depends on, runs scoped by the unit recorded on them, request bodies bounded and read only
once authenticated, and the audit log of every change (real admin API process, real Kafka)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.catalog import make_engine
from shared.querystore.demo_data import create_demo_members
from tests.admin_server import AdminServer, admin_server, admin_servers_by_dialect

pytestmark = pytest.mark.integration

PASSWORD = "pw-that-must-never-show-9931"


@dataclass(frozen=True)
class Seeded:
    """A server with a france and an emea export sharing a profile, named by ``tag`` (``partner-<tag>``,
    ``france-members-<tag>``...): a test's own on a server the module's tests share."""

    server: AdminServer
    tag: str

    def name(self, base: str) -> str:
        """``base``'s object of this test: ``partner`` → ``partner-<tag>``."""
        return f"{base}-{self.tag}"


def _seeded(server: AdminServer) -> Seeded:
    seeded = Seeded(server, uuid.uuid4().hex[:8])
    name = seeded.name
    with server.client("admin") as api:
        profile = {
            "name": name("partner"),
            "base_url": "http://127.0.0.1:9",
            "auth": {"type": "basic", "username": "u", "password": PASSWORD},
        }
        assert api.post("/api/v1/connection-profiles", json=profile).status_code == 201
        for unit in ("france", "emea"):
            query = {"name": name(f"{unit}-members"), "sql": "SELECT id, email FROM members"}
            template = {"name": name(f"{unit}-template"), "query": name(f"{unit}-members"), "profile": name("partner")}
            definition = {
                "name": name(f"{unit}-export"),
                "query": name(f"{unit}-members"),
                "template": name(f"{unit}-template"),
                "business_unit": unit,
            }
            for collection, body in (
                ("saved-queries", query),
                ("http-templates", template),
                ("export-definitions", definition),
            ):
                created = api.post(f"/api/v1/{collection}", json=body)
                assert created.status_code == 201, created.text
    return seeded


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str], kafka_bootstrap: str
) -> Iterator[Callable[[str], AdminServer]]:
    """The module's two servers (SQLite and PostgreSQL catalogs), shared by its tests but the audit's."""
    with admin_servers_by_dialect(tmp_path_factory, postgres_database_factory, kafka_bootstrap, 10) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def admin(request: pytest.FixtureRequest, servers: Callable[[str], AdminServer]) -> Seeded:
    """The API on a SQLite, then a PostgreSQL catalog, with this test's france and emea exports sharing a profile."""
    return _seeded(servers(request.param))


@pytest.fixture
def admin_alone(tmp_path: Path, database_url: str, kafka_bootstrap: str) -> Iterator[Seeded]:
    """As ``admin``, on a server and catalog of the test's own: for a test reading the whole audit log."""
    store = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(store)
    create_demo_members(engine, 10)
    engine.dispose()
    with admin_server(tmp_path, database_url, kafka_bootstrap, store) as server:
        yield _seeded(server)


def test_a_scoped_editor_changes_nothing_another_units_export_depends_on(admin: Seeded):
    name = admin.name
    with admin.server.client("emea-editor") as emea:
        changed = {"name": name("france-members"), "sql": "SELECT id, email, tier FROM members"}
        refused = emea.put(f"/api/v1/saved-queries/{name('france-members')}", json=changed)
        assert refused.status_code == 403
        assert "used by 1 definition(s) outside this token's scope" in refused.json()["detail"]
        assert "france-export" not in refused.text
        assert emea.delete(f"/api/v1/http-templates/{name('france-template')}").status_code == 403
        as_set = {"objects": [{"kind": "SavedQuery", "spec": changed}]}
        assert emea.post("/api/v1/apply", json=as_set).status_code == 403
        # Its own unit's query is its to change.
        own = emea.put(
            f"/api/v1/saved-queries/{name('emea-members')}",
            json={"name": name("emea-members"), "sql": "SELECT id, tier FROM members"},
        )
        assert own.status_code == 200, own.text
    with admin.server.client("admin") as api:
        assert (
            api.get(f"/api/v1/saved-queries/{name('france-members')}").json()["sql"] == "SELECT id, email FROM members"
        )


def test_runs_stay_in_the_scope_recorded_on_them_through_renames_and_re_created_names(admin: Seeded):
    name = admin.name
    with admin.server.client("admin") as api, admin.server.client("emea-operator") as emea:
        france_run = api.post(f"/api/v1/export-definitions/{name('france-export')}/runs").json()["run_id"]
        assert emea.get(f"/api/v1/runs/{france_run}").status_code == 404
        renamed = api.put(
            f"/api/v1/export-definitions/{name('france-export')}",
            json={
                "name": name("france-nightly"),
                "query": name("france-members"),
                "template": name("france-template"),
                "business_unit": "france",
            },
        )
        assert renamed.status_code == 200, renamed.text
        runs = api.get(f"/api/v1/export-definitions/{name('france-nightly')}/runs").json()
        assert [r["run_id"] for r in runs] == [france_run]
        assert emea.get(f"/api/v1/runs/{france_run}").status_code == 404
        assert api.delete(f"/api/v1/export-definitions/{name('france-nightly')}").status_code == 204
        # The same name re-created in emea inherits none of france's history.
        recreated = {
            "name": name("france-nightly"),
            "query": name("emea-members"),
            "template": name("emea-template"),
            "business_unit": "emea",
        }
        assert api.post("/api/v1/export-definitions", json=recreated).status_code == 201
        assert emea.get(f"/api/v1/export-definitions/{name('france-nightly')}/runs").json() == []
        assert france_run not in {r["run_id"] for r in emea.get("/api/v1/runs").json()}
        assert emea.get(f"/api/v1/runs/{france_run}").status_code == 404
        assert api.get(f"/api/v1/runs/{france_run}").status_code == 200  # the deleted definition's run stays


def _raw_post(url: str, path: str, headers: dict[str, str]) -> str:
    """Send only a request's head (no body) and read the answer: it must come without the body being read."""
    parts = urlsplit(url)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode())
        answer = b""
        while chunk := conn.recv(65_536):  # the server answers and closes the connection
            answer += chunk
        return answer.decode("latin-1")


def test_bodies_are_read_only_when_authenticated_and_never_beyond_the_limit(admin: Seeded):
    name, server = admin.name, admin.server
    sixty_mb = {"Content-Type": "application/json", "Content-Length": str(60_000_000)}
    # Answered at once although none of the 60 MB was sent: the body is never read.
    assert " 401 " in _raw_post(server.url, "/api/v1/saved-queries", sixty_mb).split("\r\n")[0]
    token = {"Authorization": f"Bearer {server.tokens['editor']}"}
    answer = _raw_post(server.url, "/api/v1/saved-queries", sixty_mb | token)
    assert " 413 " in answer.split("\r\n")[0]
    assert "EXPORT_ADMIN_MAX_BODY_BYTES" in answer
    with server.client("editor") as api:

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
            yield b'{"name": "' + name("big").encode() + b'", "sql": "SELECT 1 AS id", "description": "'
            for _ in range(40):
                yield b"x" * 65_536
            yield b'"}'

        assert api.post("/api/v1/saved-queries", content=chunks()).status_code == 413
        long_text = api.post(
            "/api/v1/saved-queries",
            json={"name": name("long"), "sql": "SELECT id FROM members", "description": "x" * 3_000},
        )
        assert long_text.status_code == 422
        assert "description" in long_text.text


def test_the_audit_log_records_each_change_with_secrets_masked_within_each_readers_scope(
    admin_alone: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    # A server of its own: what it asserts is the whole audit log (the latest entries, every creation).
    admin, name = admin_alone.server, admin_alone.name
    with admin.client("admin") as api, admin.client("editor") as editor, admin.client("emea-editor") as emea:
        changed_profile = {
            "name": name("partner"),
            "base_url": "http://127.0.0.1:9",
            "auth": {"type": "basic", "username": "u2", "password": "**********"},
        }
        assert api.put(f"/api/v1/connection-profiles/{name('partner')}", json=changed_profile).status_code == 200
        template = {
            "name": name("france-template"),
            "query": name("france-members"),
            "profile": name("partner"),
            "batch_size": 50,
        }
        assert editor.put(f"/api/v1/http-templates/{name('france-template')}", json=template).status_code == 200
        query = {"name": name("emea-members"), "sql": "SELECT id FROM members"}
        assert emea.put(f"/api/v1/saved-queries/{name('emea-members')}", json=query).status_code == 200
        entries = api.get("/api/v1/audit").json()
        assert PASSWORD not in api.get("/api/v1/audit").text
        latest = [(e["actor"], e["action"], e["kind"], e["name"]) for e in entries[:3]]
        assert latest == [
            ("emea-editor", "update", "SavedQuery", name("emea-members")),
            ("editor", "update", "HttpTemplate", name("france-template")),
            ("admin", "update", "ConnectionProfile", name("partner")),
        ]
        profile_change = entries[2]
        assert profile_change["before"]["auth"]["username"] == "u"
        assert profile_change["after"]["auth"]["username"] == "u2"
        assert profile_change["after"]["auth"]["password"] == "**********"
        assert sorted(profile_change["business_units"]) == ["emea", "france"]
        creations = [e for e in entries if e["action"] == "create"]
        assert len(creations) == 7  # the profile, and a query, a template and a definition per unit
        partner_entries = api.get("/api/v1/audit", params={"object": name("partner")}).json()
        assert [e["name"] for e in partner_entries] == [name("partner")] * 2
        assert {e["actor"] for e in api.get("/api/v1/audit", params={"actor": "editor"}).json()} == {"editor"}
    with admin.client("emea-viewer") as emea_viewer:
        seen = emea_viewer.get("/api/v1/audit").json()
        assert seen, "the emea reader sees its unit's changes"
        assert all(set(e["business_units"]) <= {"emea"} for e in seen)
        assert name("france-template") not in {e["name"] for e in seen}
        assert name("partner") not in {e["name"] for e in seen}  # shared with france

    from shared.cli.__main__ import main

    monkeypatch.setenv("EXPORT_API_URL", admin.url)
    monkeypatch.setenv("EXPORT_API_TOKEN", admin.tokens["emea-viewer"])
    assert main(["audit"]) == 0
    through_api = capsys.readouterr().out
    assert "emea-editor" in through_api
    assert f"update  SavedQuery/{name('emea-members')}" in through_api
    assert "france" not in through_api
    monkeypatch.delenv("EXPORT_API_URL")
    monkeypatch.setenv("EXPORT_CATALOG_URL", admin.catalog_url)
    assert main(["audit", "--object", name("partner"), "--details"]) == 0
    direct = capsys.readouterr().out
    assert "admin" in direct
    assert f"update  ConnectionProfile/{name('partner')} (auth)" in direct
    assert PASSWORD not in direct


def test_a_saved_query_may_not_ask_for_more_time_than_the_operator_allows(
    admin: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    greedy = {"name": admin.name("greedy"), "sql": "SELECT id FROM members", "timeout_seconds": 3_600}
    with admin.server.client("editor") as api:
        refused = api.post("/api/v1/saved-queries", json=greedy)
    assert refused.status_code == 422
    reason = refused.json()["detail"]
    assert "field 'timeout_seconds'" in reason
    assert "EXPORT_EXTRACTOR_QUERY_TIMEOUT_SECONDS" in reason
    from shared.cli.__main__ import main

    manifest = tmp_path / "greedy.yaml"
    manifest.write_text(
        f"kind: SavedQuery\nname: {admin.name('greedy')}\n"
        "spec: {sql: 'SELECT id FROM members', timeout_seconds: 3600}\n"
    )
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", admin.server.catalog_url)
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", admin.server.query_store_url)
    assert main(["apply", "-f", str(manifest)]) == 4  # refused or invalid (issue 20 exit codes)
    assert reason in capsys.readouterr().err  # the same refusal, the same reason
