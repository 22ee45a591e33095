"""The console's fields for a profile's TLS and proxy and a definition's sync mode, driven in Chromium: what is typed
is stored, a secret left blank is kept and never in the page, and change mode's fields show with change mode only."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from devtools.up import ConsoleStack
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition
from shared.domain.sync_mode import SyncMode
from tests.partner_tls import partner_tls_material

pytestmark = pytest.mark.e2e

PROXY_PASSWORD = "browser-proxy-secret-3391"


def test_a_profiles_tls_and_proxy_are_typed_stored_kept_and_their_secrets_never_shown(
    as_role, stack: ConsoleStack, stored: CatalogStores, tmp_path
):
    material = partner_tls_material(tmp_path)
    ca, certificate, key = (
        path.read_text().strip() for path in (material.ca, material.client.certificate, material.client.key)
    )
    page = as_role("admin")
    page.goto(f"{stack.console_url}/profiles/new")
    page.get_by_label("Internal name").fill("browser-tls")
    page.get_by_label("Base URL").fill("https://tls-partner.example.com")
    page.get_by_label("CA bundle (instead of the system's)").fill(ca)
    page.get_by_label("Client certificate (mutual TLS)").fill(certificate)
    page.get_by_label("Client private key").fill(key)
    page.get_by_label("Oldest TLS version accepted").select_option("TLS1.3")
    page.get_by_label("Proxy URL").fill("http://proxy.internal:3128")
    page.get_by_label("Proxy username").fill("exporter")
    page.get_by_label("Proxy password").fill(PROXY_PASSWORD)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Created.")

    profile = stored.definitions.get(ConnectionProfile, "browser-tls")
    assert profile.tls is not None
    assert profile.tls.client_key is not None
    assert (profile.tls.ca_bundle, profile.tls.min_version) == (ca, "TLS1.3")
    assert profile.tls.client_key.get_secret_value() == key
    assert profile.proxy is not None
    assert profile.proxy.password is not None
    assert profile.proxy.password.get_secret_value() == PROXY_PASSWORD
    for secret in (key.splitlines()[2], PROXY_PASSWORD):
        assert secret not in page.content()
    expect(page.get_by_label("Client private key")).to_have_attribute(
        "placeholder", "stored (hidden): leave blank to keep it"
    )

    # The proxy moved with its password left blank: refused beside the password (a masked secret is kept only while
    # it goes where it went), nothing saved; given again, saved, the client key (its host unchanged) kept.
    page.get_by_label("Proxy URL").fill("http://proxy2.internal:8080")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#proxy_password-error")).to_have_text("give the secret again: the host it is sent to changed")
    assert stored.definitions.get(ConnectionProfile, "browser-tls").proxy.url == "http://proxy.internal:3128"
    page.get_by_label("Proxy password").fill(PROXY_PASSWORD)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    profile = stored.definitions.get(ConnectionProfile, "browser-tls")
    assert profile.proxy is not None
    assert profile.proxy.url == "http://proxy2.internal:8080"
    assert profile.proxy.password is not None
    assert profile.proxy.password.get_secret_value() == PROXY_PASSWORD
    assert profile.tls is not None
    assert profile.tls.client_key is not None
    assert profile.tls.client_key.get_secret_value() == key

    # A proxy without a port: said beside the field, nothing saved.
    page.get_by_label("Proxy URL").fill("http://proxy.internal")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#proxy_url-error")).to_contain_text("host and port")
    expect(page.get_by_label("Proxy URL")).to_have_attribute("aria-invalid", "true")
    assert stored.definitions.get(ConnectionProfile, "browser-tls").proxy == profile.proxy


def test_change_modes_fields_show_with_change_mode_and_are_stored(as_role, stack: ConsoleStack, stored: CatalogStores):
    page = as_role("admin")
    page.goto(f"{stack.console_url}/exports/christmas-bronze?step=destination")
    bound = page.get_by_label("Most members a run may remove")
    expect(bound).to_be_hidden()
    page.get_by_label("Sync mode").select_option("changes")
    expect(bound).to_be_visible()
    bound.fill("10%")
    page.get_by_label("Removed members sent with").select_option("-")
    page.locator("#panel-destination").get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    sync = stored.definitions.get(ExportDefinition, "christmas-bronze").sync
    assert (sync.mode, sync.max_removed, sync.removed) == (SyncMode.CHANGES, "10%", False)

    # Back to full mode: change mode's fields are hidden and not sent, so nothing of them is stored.
    page.get_by_label("Sync mode").select_option("full")
    expect(bound).to_be_hidden()
    page.locator("#panel-destination").get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    sync = stored.definitions.get(ExportDefinition, "christmas-bronze").sync
    assert (sync.mode, sync.max_removed, sync.removed) == (SyncMode.FULL, None, None)
