"""The attempt inspector end to end on one catalog: the dispatcher (against real HTTP receivers that echo the
request's headers back, one of them an OAuth partner) keeps its attempts masked, and the admin API (a real
server) and exportctl (both modes) show them to readers who may dry-run, within their business-unit scope, no
secret anywhere: not the profiles' secrets, not the OAuth access token fetched at run time."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.inspector import AttemptInspector
from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.domain.attempts import CapturedAttempt
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
from shared.events import MemberBatch
from shared.topics import Topics
from tests.admin_server import AdminServer, admin_server
from tests.dispatcher_helpers import blocking_dispatcher, dispatch_catalog, http_on_loop

pytestmark = pytest.mark.integration

TOKEN = "inspector-bearer-token-4711"
PASSWORD = "france-basic-password-0815"
SIGNING = "whsec_aW5zcGVjdG9yLXNpZ25pbmcta2V5"
QUERY_SECRET = "qs-api-key-value-42"
OAUTH_SECRET = "oauth-client-secret-2718"
#: What the OAuth receiver issues first: fetched by the dispatcher at run time, never in the catalog.
ACCESS_TOKEN = "token-1"
BASIC = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
SECRETS = (TOKEN, PASSWORD, SIGNING, QUERY_SECRET, OAUTH_SECRET, ACCESS_TOKEN, BASIC)
QUICK = RetryBudget(max_attempts=3, max_seconds=10, initial_backoff=0.01, max_backoff=0.05)
RUN = uuid.uuid4()


@dataclass
class Stack:
    catalog: CatalogStores
    catalog_path: Path
    admin: AdminServer


def _objects(base_url: str, oauth_url: str) -> list[object]:
    return [
        ConnectionProfile.model_validate(
            {
                "name": "emea-oauth",
                "base_url": oauth_url,
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{oauth_url}/oauth/token",
                    "client_id": "inspector-client",
                    "client_secret": OAUTH_SECRET,
                },
            }
        ),
        HttpTemplate(name="oauth-t", query="q", profile="emea-oauth", path="/v1/members"),
        ExportDefinition(name="oauth-export", business_unit="emea", query="q", template="oauth-t"),
        ConnectionProfile.model_validate(
            {
                "name": "emea-partner",
                "base_url": base_url,
                "auth": {"type": "bearer", "token": "env:PARTNER_INSPECTOR_TOKEN"},
                "signing_secret": SIGNING,
            }
        ),
        ConnectionProfile.model_validate(
            {
                "name": "france-partner",
                "base_url": base_url,
                "auth": {"type": "basic", "username": "u", "password": PASSWORD},
            }
        ),
        HttpTemplate(
            name="emea-t", query="q", profile="emea-partner", path="/v1/members", query_string={"api_key": QUERY_SECRET}
        ),
        HttpTemplate(name="france-t", query="q", profile="france-partner", path="/v1/members"),
        ExportDefinition(name="emea-export", business_unit="emea", query="q", template="emea-t"),
        ExportDefinition(name="france-export", business_unit="france", query="q", template="france-t"),
    ]


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    migrated_catalog: Callable[[str], CatalogStores],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("inspector")
    receivers = (
        HttpReceiver(fail_first=1, echo_headers=True),
        HttpReceiver(oauth_client=("inspector-client", OAUTH_SECRET), echo_headers=True),
    )
    with (
        receivers[0] as receiver,
        receivers[1] as oauth,
        dispatch_catalog(migrated_catalog, tmp, *_objects(receiver.url, oauth.url)) as catalog,  # type: ignore[arg-type]
    ):
        inspector = AttemptInspector(catalog.attempts, success_sample=1.0)
        # The dispatcher's environment holds the token the profile refers to (only while it dispatches).
        with pytest.MonkeyPatch.context() as env, http_on_loop() as http:
            env.setenv("PARTNER_INSPECTOR_TOKEN", TOKEN)
            dispatcher = blocking_dispatcher(catalog, http, QUICK, Topics("x."), inspector=inspector)
            for definition, template in (
                ("emea-export", "emea-t"),
                ("france-export", "france-t"),
                ("oauth-export", "oauth-t"),
            ):
                members = [{"id": 1, "email": f"amelie@{definition}.example"}]
                batch = MemberBatch(
                    run_id=RUN, definition=definition, template=template, batch_index=4, members=members
                )
                dispatcher.handle(batch)
        inspector.flush()
        assert oauth.state.tokens_issued == 1
        catalog_url = f"sqlite:///{tmp / 'catalog.db'}"
        with admin_server(tmp, catalog_url, kafka_bootstrap) as admin:
            yield Stack(catalog, tmp / "catalog.db", admin)


def _no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _attempts(catalog: CatalogStores, definition: str) -> list[CapturedAttempt]:
    definition_id, _, _ = catalog.definitions.get_versioned(ExportDefinition, definition)
    return catalog.attempts.attempts(definition_id)


def test_the_dispatcher_keeps_each_attempt_with_its_number_and_masks_every_secret(stack: Stack):
    retried, refused = _attempts(stack.catalog, "emea-export")
    assert (refused.attempt, refused.status, refused.success) == (1, 503, False)
    assert (retried.attempt, retried.status, retried.success) == (2, 200, True)
    assert (retried.run_id, retried.batch_index, retried.profile) == (RUN, 4, "emea-partner")
    assert retried.method == "POST"
    assert retried.url.endswith("/v1/members?api_key=***")
    headers = retried.request_headers
    assert headers["Authorization"] == headers["webhook-signature"] == "***"
    assert headers["webhook-id"] == headers["Idempotency-Key"] == f"{RUN}:4"
    assert json.loads(retried.request_body) == [{"id": 1, "email": "amelie@emea-export.example"}]
    assert retried.request_bytes == len(retried.request_body.encode())
    assert retried.response_headers["Content-Type"] == "application/json"
    assert refused.latency_ms > 0
    # The receiver echoed every request header in its answer: there, each credential is masked too.
    assert json.loads(refused.response_body)["headers"]["Authorization"] == "***"
    assert retried.response_headers["X-Echo-Authorization"] == "***"
    [basic] = _attempts(stack.catalog, "france-export")
    assert basic.request_headers["Authorization"] == "***"
    assert json.loads(basic.response_body)["headers"]["Authorization"] == "***"
    [oauth] = _attempts(stack.catalog, "oauth-export")
    assert (oauth.status, oauth.request_headers["Authorization"]) == (200, "***")
    assert json.loads(oauth.response_body)["headers"]["Authorization"] == "***"
    # Nothing of a secret in the table, whatever the column.
    with sqlite3.connect(stack.catalog_path) as db:
        _no_secret_in(repr(db.execute("SELECT * FROM attempts").fetchall()))


def test_the_api_shows_a_definitions_attempts_to_who_may_dry_run_within_the_scope(stack: Stack):
    with stack.admin.client("emea-viewer") as api:
        refused = api.get("/api/v1/export-definitions/emea-export/attempts")
        assert refused.status_code == 403, "a viewer may not read member data as sent"
        assert "dry_run" in refused.json()["detail"]
    with stack.admin.client("emea-editor") as api:
        answer = api.get("/api/v1/export-definitions/emea-export/attempts")
        assert answer.status_code == 200
        assert [(a["attempt"], a["status"]) for a in answer.json()] == [(2, 200), (1, 503)]
        failed = api.get("/api/v1/export-definitions/emea-export/attempts", params={"failed": "true"}).json()
        assert [a["status"] for a in failed] == [503]
        assert (
            api.get("/api/v1/export-definitions/emea-export/attempts", params={"status": 200}).json()[0]["attempt"] == 2
        )
        assert api.get("/api/v1/export-definitions/emea-export/attempts", params={"profile": "other"}).json() == []
        other_unit = api.get("/api/v1/export-definitions/france-export/attempts")
        assert other_unit.status_code == 403
        assert api.get("/api/v1/export-definitions/nope/attempts").status_code == 404
        refused = api.get("/api/v1/export-definitions/emea-export/attempts", params={"limit": 0})
        assert refused.status_code == 422
        assert "limit" in refused.text
        oauth = api.get("/api/v1/export-definitions/oauth-export/attempts")
        assert [a["status"] for a in oauth.json()] == [200]
        _no_secret_in(answer.text + other_unit.text + oauth.text)
    with stack.admin.client("operator") as api:
        france = api.get("/api/v1/export-definitions/france-export/attempts")
        assert [a["profile"] for a in france.json()] == ["france-partner"]
        _no_secret_in(france.text)


def test_exportctl_attempts_through_the_api_and_on_the_catalog(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("EXPORT_CATALOG_URL", raising=False)
    monkeypatch.setenv("EXPORT_API_URL", stack.admin.url)
    monkeypatch.setenv("EXPORT_API_TOKEN", stack.admin.tokens["emea-operator"])
    assert exportctl(["attempts", "emea-export"]) == 0
    table = capsys.readouterr().out
    assert "emea-partner" in table
    assert " 503 " in table
    assert " 200 " in table
    assert exportctl(["attempts", "france-export"]) == 4  # out of the token's scope: refused
    assert "outside this token's scope" in capsys.readouterr().err
    assert exportctl(["attempts", "emea-export", "--failed", "-o", "json"]) == 0
    through_api = capsys.readouterr().out
    assert [a["status"] for a in json.loads(through_api)] == [503]

    monkeypatch.delenv("EXPORT_API_URL")
    monkeypatch.setenv("EXPORT_CATALOG_URL", stack.admin.catalog_url)
    assert exportctl(["attempts", "emea-export", "--failed", "-o", "json"]) == 0
    direct = capsys.readouterr().out
    assert json.loads(direct) == json.loads(through_api), "both modes show the same attempts"
    assert exportctl(["attempts", "france-export", "--profile", "france-partner", "--details"]) == 0
    details = capsys.readouterr().out
    assert "> Authorization: ***" in details
    assert '[{"id":1,"email":"amelie@france-export.example"}]' in details
    assert "< 200" in details
    assert exportctl(["attempts", "oauth-export", "--details"]) == 0
    oauth = capsys.readouterr().out
    assert "< X-Echo-Authorization: ***" in oauth
    assert exportctl(["attempts", "nope"]) == 3
    _no_secret_in(table + through_api + direct + details + oauth + capsys.readouterr().err)
