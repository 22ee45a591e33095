"""The OAuth token cache never sends one partner's token to another (issue 12, finding 12 b): a profile
re-pointed at a new partner gets a new token from the new token endpoint. Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch
from shared.topics import Topics
from tests.dispatcher_helpers import BlockingDispatcher, Http, blocking_dispatcher, dispatch_catalog, http_on_loop

pytestmark = pytest.mark.integration
CLIENT = ("exporter", "cs-456")


@pytest.fixture
def catalog(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    template = HttpTemplate(name="t", query="q", profile="p", path="/members")
    with dispatch_catalog(migrated_catalog, tmp_path, template) as catalog:
        yield catalog


@pytest.fixture
def http() -> Iterator[Http]:
    with http_on_loop() as http:
        yield http


def _point(catalog: CatalogStores, base_url: str, token_url: str, client_id: str = CLIENT[0]) -> None:
    """Save profile ``p`` (the dispatcher reads it afresh: no catalog cache in these tests)."""
    auth = {"type": "oauth2_client_credentials", "token_url": token_url, "client_id": client_id}
    catalog.definitions.apply(ConnectionProfile(name="p", base_url=base_url, auth={**auth, "client_secret": CLIENT[1]}))


def _send(dispatcher: BlockingDispatcher, index: int) -> BatchOutcome:
    batch = MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=index, members=[{"id": 1}])
    outcome = RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch)[-1].value)
    assert isinstance(outcome, BatchOutcome)
    return outcome


def _dispatcher(catalog: CatalogStores, http: Http) -> BlockingDispatcher:
    return blocking_dispatcher(catalog, http, RetryBudget(max_attempts=2), Topics("x."))


def test_a_profile_repointed_at_another_partner_fetches_that_partners_token(catalog, http):
    with HttpReceiver(oauth_client=CLIENT) as old, HttpReceiver(oauth_client=CLIENT) as new:
        dispatcher = _dispatcher(catalog, http)
        _point(catalog, old.url, f"{old.url}/oauth/token")
        assert _send(dispatcher, 0).delivered == 1
        _point(catalog, new.url, f"{new.url}/oauth/token")
        assert _send(dispatcher, 1).delivered == 1
    assert (old.state.tokens_issued, new.state.tokens_issued) == (1, 1)
    # The new partner never saw a token it had not issued (the old one would have been answered 401).
    assert [r.status for r in new.receipts()] == [200]
    assert [r.status for r in old.receipts()] == [200]


def test_a_new_base_url_behind_the_same_token_endpoint_gets_a_token_of_its_own(catalog, http):
    with HttpReceiver(oauth_client=CLIENT) as issuer, HttpReceiver() as other_host:
        dispatcher = _dispatcher(catalog, http)
        _point(catalog, issuer.url, f"{issuer.url}/oauth/token")
        _send(dispatcher, 0)
        _point(catalog, other_host.url, f"{issuer.url}/oauth/token")
        _send(dispatcher, 1)
    [first] = issuer.receipts()
    [second] = other_host.receipts()
    assert issuer.state.tokens_issued == 2
    assert first.headers["Authorization"] == "Bearer token-1"
    assert second.headers["Authorization"] == "Bearer token-2"  # not the token given for the first host


def test_a_new_client_id_gets_a_token_of_its_own(catalog, http):
    with HttpReceiver(oauth_client=CLIENT) as partner:
        dispatcher = _dispatcher(catalog, http)
        _point(catalog, partner.url, f"{partner.url}/oauth/token")
        assert _send(dispatcher, 0).delivered == 1
        _point(catalog, partner.url, f"{partner.url}/oauth/token", client_id="someone-else")
        refused = _send(dispatcher, 1)
    # The new client's credentials are refused by the token endpoint: no request leaves with the old token.
    assert refused.failed == 1
    assert "OAuth token endpoint refused the client credentials (401)" in (refused.error or "")
    assert [r.status for r in partner.receipts()] == [200]
