"""Issue 17: the dispatcher reaching partners over mutual TLS with their own CA, through a forward proxy, and
sending form and XML bodies — against real servers on 127.0.0.1 (an HTTPS receiver asking for a client
certificate, a CONNECT proxy asking for Basic credentials), certificates made for the test."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from devtools.forward_proxy import ForwardProxy
from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.destinations import DestinationPolicy
from shared.domain.proxy_policy import proxy_policy
from shared.events import MemberBatch
from shared.outbound.guard import guarded_client
from shared.outbound.partner_http import AiohttpPartnerHttp
from shared.outbound.partner_network import PartnerNetwork
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp
from shared.outbound.session_pool import SessionPool
from shared.topics import Topics
from tests.dispatcher_helpers import PARTNER_HTTP, BlockingDispatcher, dispatch_catalog
from tests.integration.test_dispatcher_security import outcome_and_letters
from tests.partner_tls import (
    TlsMaterial,
    client_common_name,
    make_untrusted_ca,
    mutual_tls_server_context,
    partner_tls_material,
)

pytestmark = pytest.mark.integration
TOPICS = Topics("x.")
QUICK_RETRIES = RetryBudget(max_attempts=3, max_seconds=10, initial_backoff=0.01, max_backoff=0.05)
PROXY_USER, PROXY_PASSWORD = "exporter", "pr0xy-s3cret"


@pytest.fixture
def material(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TlsMaterial:
    """Certificates in a directory file: references may name (as the dispatcher's settings would allow)."""
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", str(tmp_path / "tls"))
    return partner_tls_material(tmp_path / "tls")


@pytest.fixture
def catalog(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    with dispatch_catalog(migrated_catalog, tmp_path) as catalog:
        yield catalog


@pytest.fixture
def partner(material: TlsMaterial) -> Iterator[HttpReceiver]:
    with HttpReceiver(ssl_context=mutual_tls_server_context(material), oauth_client=None) as receiver:
        yield receiver


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        yield proxy


#: The partner HTTP client the dispatcher of the running test uses (each test runs on each: with reqwest, the
#: profiles' tls and proxy settings are served by its inner aiohttp client).
CLIENT = {"kind": "aiohttp"}


@pytest.fixture(autouse=True, params=sorted(PARTNER_HTTP))
def partner_http(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(CLIENT, "kind", request.param)
    return str(request.param)


@contextmanager
def dispatching(
    catalog: CatalogStores, allowlist: str = "127.0.0.1", allowed_proxies: str = "", max_sessions: int = 32
) -> Iterator[tuple[BlockingDispatcher, AiohttpPartnerHttp | ReqwestPartnerHttp]]:
    """A dispatcher on its own event loop, its partner requests and token requests on the profiles' sessions."""
    policy = DestinationPolicy.parse(allowlist)
    with start_blocking_portal() as portal:
        partners = PARTNER_HTTP[CLIENT["kind"]](
            policy, proxies=proxy_policy(policy, allowed_proxies), max_sessions=max_sessions
        )
        client = guarded_client(policy)
        dispatcher = Dispatcher(
            objects=CatalogCache(catalog.definitions, catalog.runs, ttl=0),
            deliverer=Deliverer(partners, QUICK_RETRIES),
            tokens=OAuthTokenCache(client, clients=partners.token_client),
            topics=TOPICS,
        )
        try:
            yield BlockingDispatcher(dispatcher, portal), partners
        finally:
            portal.call(partners.aclose)
            portal.call(client.aclose)


def mutual_tls(material: TlsMaterial, **overrides: Any) -> dict[str, Any]:
    """The profile's ``tls``: the partner's CA, the client certificate and key, all as file: references."""
    return {
        "ca_bundle": f"file:{material.ca}",
        "client_certificate": f"file:{material.client.certificate}",
        "client_key": f"file:{material.client.key}",
        **overrides,
    }


def save(catalog: CatalogStores, base_url: str, template: dict[str, Any] | None = None, **profile: Any) -> None:
    catalog.definitions.apply(ConnectionProfile.model_validate({"name": "p", "base_url": base_url, **profile}))
    spec = template or {"path": "/v1/members"}
    catalog.definitions.apply(HttpTemplate.model_validate({"name": "t", "query": "q", "profile": "p", **spec}))


def batch(*members: dict[str, Any]) -> MemberBatch:
    return MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=list(members))


def proxied(proxy: ForwardProxy, password: str = "env:PARTNER_PROXY_PASSWORD") -> dict[str, Any]:
    return {"url": proxy.url, "username": PROXY_USER, "password": password}


# --- Mutual TLS and a custom CA ----------------------------------------------------------------------


def test_members_reach_a_partner_requiring_a_client_certificate_signed_by_its_own_ca(catalog, material, partner):
    save(catalog, partner.url, tls=mutual_tls(material))
    with dispatching(catalog) as (dispatcher, _):
        outcome, letters = outcome_and_letters(dispatcher.handle(batch({"id": 1}, {"id": 2})))
    assert (outcome.delivered, outcome.failed, letters) == (2, 0, [])
    [receipt] = partner.receipts()
    assert receipt.members == [{"id": 1}, {"id": 2}]
    assert client_common_name(receipt.client_certificate) == "exporter"


def test_inline_pem_and_tls_1_3_as_the_minimum_reach_the_partner_too(catalog, material, partner):
    inline = {
        "ca_bundle": material.ca.read_text(),
        "client_certificate": material.client.certificate.read_text(),
        "client_key": material.client.key.read_text(),
        "min_version": "TLS1.3",
    }
    save(catalog, partner.url, tls=inline)
    with dispatching(catalog) as (dispatcher, _):
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.delivered == 1
    assert [client_common_name(r.client_certificate) for r in partner.receipts()] == ["exporter"]


def test_without_a_client_certificate_the_batch_is_dead_lettered_at_once_saying_the_partner_wants_one(
    catalog, material
):
    # TLS 1.2: the refusal comes in the handshake (TLS 1.3 tells it later, see mutual_tls_server_context).
    context = mutual_tls_server_context(material, maximum_version=ssl.TLSVersion.TLSv1_2)
    with HttpReceiver(ssl_context=context) as partner:
        save(catalog, partner.url, tls={"ca_bundle": f"file:{material.ca}"})
        with dispatching(catalog) as (dispatcher, _):
            outcome, letters = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
        assert partner.receipts() == []
        assert partner.state.failed_handshakes == 1
    assert outcome.failed == 1
    assert outcome.attempts == 1, "a TLS refusal is not retried"
    assert letters[0].reason == outcome.error
    assert outcome.error.startswith("TLS: the handshake with the partner failed: [SSL:")
    assert "tls.client_certificate and tls.client_key" in str(outcome.error)


def test_a_partner_certificate_the_profiles_ca_did_not_sign_is_refused_with_the_reason(
    catalog, material, partner, tmp_path
):
    other_ca = make_untrusted_ca(tmp_path / "tls")
    save(catalog, partner.url, tls=mutual_tls(material, ca_bundle=f"file:{other_ca}"))
    with dispatching(catalog) as (dispatcher, _):
        outcome, letters = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
        assert outcome.error.startswith(
            "TLS: the partner's certificate is not trusted ([SSL: CERTIFICATE_VERIFY_FAILED]"
        )
        assert "tls.ca_bundle must hold the CA that signed it" in str(outcome.error)
        assert [letter.members for letter in letters] == [[{"id": 1}]]

        # The profile is corrected: the next batch goes out on a session with the right CA.
        save(catalog, partner.url, tls=mutual_tls(material))
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 2})))
    assert outcome.delivered == 1
    assert [r.members for r in partner.receipts()] == [[{"id": 2}]]


def test_a_client_key_reference_that_cannot_be_read_is_dead_lettered_naming_the_field_not_the_key(
    catalog, material, partner
):
    save(catalog, partner.url, tls=mutual_tls(material, client_key=f"file:{material.client.key}.missing"))
    with dispatching(catalog) as (dispatcher, _):
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error.startswith(f"connection profile tls.client_key: secret reference file:{material.client.key}")
    assert "cannot be read" in str(outcome.error)
    mismatched = mutual_tls(material, client_key=f"file:{material.server.key}")
    save(catalog, partner.url, tls=mismatched)
    with dispatching(catalog) as (dispatcher, _):
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error.startswith("connection profile tls.client_certificate/tls.client_key: cannot be loaded")
    assert "PRIVATE KEY" not in str(outcome.error)
    assert partner.receipts() == []


# --- Through a forward proxy ------------------------------------------------------------------------


def test_partner_and_token_requests_go_through_the_profiles_proxy_and_tls(
    catalog, material, proxy, monkeypatch, tmp_path
):
    monkeypatch.setenv("PARTNER_PROXY_PASSWORD", PROXY_PASSWORD)
    monkeypatch.setenv("PARTNER_OAUTH_SECRET", "client-s3cret")
    context = mutual_tls_server_context(material)
    with HttpReceiver(ssl_context=context, oauth_client=("exporter", "client-s3cret")) as partner:
        oauth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{partner.url}/oauth/token",
            "client_id": "exporter",
            "client_secret": "env:PARTNER_OAUTH_SECRET",
        }
        save(catalog, partner.url, tls=mutual_tls(material), proxy=proxied(proxy), auth=oauth)
        with dispatching(catalog) as (dispatcher, _):
            outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
        assert outcome.delivered == 1
        assert partner.state.tokens_issued == 1, "the token request passed the partner's mutual TLS"
        [receipt] = partner.receipts()
        assert receipt.headers["Authorization"] == "Bearer token-1"
        assert client_common_name(receipt.client_certificate) == "exporter"
        assert "Proxy-Authorization" not in receipt.headers
    assert proxy.passed
    assert set(proxy.passed) == {("CONNECT", f"127.0.0.1:{partner.port}")}
    assert proxy.refused == []


def test_plain_http_partners_are_reached_through_the_proxy_too(catalog, proxy, monkeypatch):
    monkeypatch.setenv("PARTNER_PROXY_PASSWORD", PROXY_PASSWORD)
    with HttpReceiver() as partner:
        save(catalog, partner.url, proxy=proxied(proxy))
        with dispatching(catalog) as (dispatcher, _):
            outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
        assert outcome.delivered == 1
        assert [r.members for r in partner.receipts()] == [[{"id": 1}]]
    assert proxy.passed == [("POST", f"{partner.url}/v1/members")]


def test_a_proxy_refusing_the_credentials_dead_letters_the_batch_without_revealing_the_password(
    catalog, material, partner, proxy
):
    save(catalog, partner.url, tls=mutual_tls(material), proxy=proxied(proxy, password="wrong-pr0xy-pass"))
    with dispatching(catalog) as (dispatcher, _):
        outcome, letters = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error == (
        "the profile's proxy refused the request: 407 Proxy Authentication Required "
        "(check proxy.username and proxy.password)"
    )
    assert outcome.attempts == 1
    assert "wrong-pr0xy-pass" not in letters[0].model_dump_json()
    assert proxy.passed == []
    assert partner.receipts() == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_guard_refuses_a_loopback_partner_through_an_allowed_proxy_before_anything_is_sent(
    catalog, material, partner, proxy, monkeypatch, host
):
    monkeypatch.setenv("PARTNER_PROXY_PASSWORD", PROXY_PASSWORD)
    save(catalog, f"https://{host}:{partner.port}", tls=mutual_tls(material), proxy=proxied(proxy))
    # Public destinations only; the proxy (on loopback) is allowed as a proxy, not as a destination.
    with dispatching(catalog, allowlist="", allowed_proxies="127.0.0.1") as (dispatcher, _):
        outcome, letters = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error.startswith(f"destination {host} (127.0.0.1) is a loopback address")
    assert outcome.attempts == 1
    assert [letter.members for letter in letters] == [[{"id": 1}]]
    assert proxy.passed == []
    assert proxy.refused == []
    assert partner.receipts() == []


def test_a_partner_name_the_dispatcher_cannot_resolve_is_not_sent_through_the_proxy(catalog, proxy, monkeypatch):
    monkeypatch.setenv("PARTNER_PROXY_PASSWORD", PROXY_PASSWORD)
    save(catalog, "https://partner.invalid/v1", proxy=proxied(proxy))
    with dispatching(catalog, allowlist="", allowed_proxies="127.0.0.1") as (dispatcher, _):
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error == (
        "partner.invalid does not resolve from the dispatcher: it is judged before anything is sent through the "
        "profile's proxy"
    )
    assert outcome.attempts == QUICK_RETRIES.max_attempts, "retried: a name may resolve again"
    assert proxy.passed == []


def test_a_proxy_the_operator_did_not_allow_is_refused(catalog, material, partner, proxy, monkeypatch):
    monkeypatch.setenv("PARTNER_PROXY_PASSWORD", PROXY_PASSWORD)
    save(catalog, "https://partner.example", tls=mutual_tls(material), proxy=proxied(proxy))
    with dispatching(catalog, allowlist="") as (dispatcher, _):
        outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
    assert outcome.error.startswith("the profile's proxy: destination 127.0.0.1 (127.0.0.1) is a loopback address")
    assert outcome.error.endswith("(or in EXPORT_ALLOWED_PROXIES, for a proxy only)")
    assert proxy.passed == []


# --- One session per network configuration ----------------------------------------------------------


def test_sessions_are_one_per_configuration_bounded_and_rebuilt_when_a_referenced_file_changes(material, tmp_path):
    ca = tmp_path / "tls" / "rotating-ca.pem"
    ca.write_text(material.ca.read_text())

    async def scenario() -> None:
        pool = SessionPool(DestinationPolicy(), max_sessions=2, refresh_seconds=0, grace_seconds=0)
        first = PartnerNetwork(
            ConnectionProfile.model_validate(
                {"name": "a", "base_url": "https://x", "tls": {"ca_bundle": f"file:{ca}"}}
            ).tls
        )
        again = pool.route(first).session
        assert pool.route(first).session is again, "the same configuration, the same session"
        ca.write_text(make_untrusted_ca(tmp_path / "other").read_text())
        rotated = pool.route(first).session
        assert rotated is not again, "a rotated CA file gives a new session"
        for version in ("TLS1.2", "TLS1.3"):
            network = PartnerNetwork(first.tls.model_copy(update={"min_version": version}) if first.tls else None)
            pool.route(network)
        assert len(pool) == 2, "the least recently used configuration was retired"
        await asyncio.sleep(0)  # the retired sessions' close (grace 0) runs on the loop
        await pool.aclose()
        assert again.closed
        assert rotated.closed

    asyncio.run(scenario())


# --- Form and XML bodies ----------------------------------------------------------------------------


def test_form_and_xml_bodies_are_received_and_parsed_by_the_partner(catalog):
    members = [{"id": 1, "email": "a@example.com", "name": "Zoë & <co>"}, {"id": 2, "email": "b@x.io", "name": "+1"}]
    with HttpReceiver() as partner:
        form = {
            "content_type": "form",
            "form": {"member_id": "{{ member.id }}", "email": "{{ member.email }}", "name": "{{ member.name }}"},
            "batch_size": 2,
        }
        save(catalog, partner.url, template=form)
        with dispatching(catalog) as (dispatcher, _):
            assert outcome_and_letters(dispatcher.handle(batch(*members)))[0].delivered == 2
            xml = {
                "content_type": "xml",
                "body": '<members>{% for m in members %}<member id="{{ m.id }}"><email>{{ m.email }}</email>'
                "<name>{{ m.name }}</name></member>{% endfor %}</members>",
            }
            save(catalog, partner.url, template=xml)
            assert outcome_and_letters(dispatcher.handle(batch(*members)))[0].delivered == 2
        form_receipt, xml_receipt = partner.receipts()
    assert form_receipt.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_receipt.form() == {
        "member_id": ["1", "2"],
        "email": ["a@example.com", "b@x.io"],
        "name": ["Zoë & <co>", "+1"],
    }
    assert xml_receipt.headers["Content-Type"] == "application/xml; charset=utf-8"
    root = xml_receipt.xml()
    assert [(m.get("id"), m.findtext("email"), m.findtext("name")) for m in root.iter("member")] == [
        ("1", "a@example.com", "Zoë & <co>"),
        ("2", "b@x.io", "+1"),
    ]


def test_a_partner_below_the_profiles_minimum_tls_version_is_refused_saying_so(catalog, material):
    context = mutual_tls_server_context(material, maximum_version=ssl.TLSVersion.TLSv1_2)
    with HttpReceiver(ssl_context=context) as partner:
        save(catalog, partner.url, tls=mutual_tls(material, min_version="TLS1.3"))
        with dispatching(catalog) as (dispatcher, _):
            outcome, _ = outcome_and_letters(dispatcher.handle(batch({"id": 1})))
        assert partner.receipts() == []
    assert outcome.error.startswith("TLS: the handshake with the partner failed: [SSL:")
    assert "tls.min_version" in str(outcome.error)
