"""Secret references reach only what the operator allows (issue 12, finding 9), as reproduced: a bearer
token of ``env:EXPORT_CATALOG_URL`` sent the catalog's password to the partner, an OAuth client secret of
``file:/etc/passwd`` sent the file to the token URL. Refused at dispatch (a profile saved before this
release) and at save (exportctl, the same use case as the admin API). Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch
from shared.topics import Topics
from tests.dispatcher_helpers import Http, blocking_dispatcher, dispatch_catalog, http_on_loop

pytestmark = pytest.mark.integration
CATALOG_PASSWORD = "catalog-pw-7731"


@pytest.fixture
def catalog(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    template = HttpTemplate(name="t", query="q", profile="p", path="/members")
    with dispatch_catalog(migrated_catalog, tmp_path, template) as catalog:
        yield catalog


@pytest.fixture
def http() -> Iterator[Http]:
    with http_on_loop() as http:
        yield http


def _deliver(catalog: CatalogStores, http: Http, profile: ConnectionProfile) -> BatchOutcome:
    catalog.definitions.apply(profile)  # straight into the catalog, as a profile saved before the allow-lists
    dispatcher = blocking_dispatcher(catalog, http, RetryBudget(max_attempts=2), Topics("x."))
    batch = MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=[{"id": 1}])
    outcome = RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch)[-1].value)
    assert isinstance(outcome, BatchOutcome)
    return outcome


def test_a_bearer_token_naming_the_catalog_url_sends_nothing(catalog, http, monkeypatch):
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"postgresql+psycopg://member_export:{CATALOG_PASSWORD}@db/catalog")
    with HttpReceiver() as partner:
        outcome = _deliver(
            catalog,
            http,
            ConnectionProfile(
                name="p", base_url=partner.url, auth={"type": "bearer", "token": "env:EXPORT_CATALOG_URL"}
            ),
        )
    assert partner.receipts() == []
    assert outcome.failed == 1
    assert "secret reference env:EXPORT_CATALOG_URL is not allowed" in (outcome.error or "")
    assert CATALOG_PASSWORD not in (outcome.error or "")


def test_an_oauth_client_secret_naming_etc_passwd_never_reaches_the_token_url(catalog, http):
    with HttpReceiver() as token_endpoint, HttpReceiver() as partner:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{token_endpoint.url}/oauth/token",
            "client_id": "exporter",
            "client_secret": "file:/etc/passwd",
        }
        outcome = _deliver(catalog, http, ConnectionProfile(name="p", base_url=partner.url, auth=auth))
    assert token_endpoint.receipts() == []  # before: a POST whose form held the whole file
    assert partner.receipts() == []
    assert "secret reference file:/etc/passwd is not allowed" in (outcome.error or "")
    assert "root:" not in (outcome.error or "")


def test_exportctl_apply_refuses_a_forbidden_reference_naming_the_field(
    tmp_path, monkeypatch, capsys, migrated_catalog
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    migrated_catalog(catalog_url).close()
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", catalog_url)
    monkeypatch.setenv("EXPORT_ALLOWED_DESTINATIONS", "203.0.113.0/24")
    manifest = tmp_path / "profile.yaml"
    manifest.write_text(
        "kind: ConnectionProfile\nname: p\n"
        "spec: {base_url: 'https://203.0.113.10', auth: {type: bearer, token: 'env:EXPORT_CATALOG_URL'}}\n"
    )
    assert exportctl(["apply", "-f", str(manifest), "--skip-discovery"]) == 4  # refused or invalid
    error = capsys.readouterr().err
    assert (
        "exportctl: ConnectionProfile 'p': field 'auth.token': secret reference env:EXPORT_CATALOG_URL is not allowed"
        in error
    )
    assert tmp_path.name not in error  # the variable's value (the catalog URL) is never shown
    stores = CatalogStores.from_url(catalog_url)
    assert stores.definitions.find(ConnectionProfile, "p") is None
    stores.close()
