"""Role-aware pages, copy and delete after a confirmation, write-only secrets, and forms sent from elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from devtools.up import ConsoleStack
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition

pytestmark = pytest.mark.e2e


def test_a_viewer_sees_no_edit_or_run_controls(as_role, stack: ConsoleStack):
    page = as_role("viewer")
    expect(page.get_by_role("link", name="Open nightly-gold")).to_be_visible()
    for control in ("New export definition", "Copy nightly-gold", "Delete nightly-gold", "Run nightly-gold now"):
        expect(page.get_by_role("link", name=control)).to_have_count(0)
    expect(page.get_by_role("link", name="Connection profiles")).to_have_count(0)
    page.get_by_role("link", name="Open nightly-gold").click()
    expect(page.get_by_role("heading", name="Nightly gold members")).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    expect(page.get_by_role("link", name="Run now")).to_have_count(0)
    expect(page.get_by_label("Label")).to_be_disabled()
    expect(page.get_by_label("Bigdata Query")).to_be_disabled()


def test_an_operator_may_run_but_not_change_nor_open_a_profile(as_role, stack: ConsoleStack):
    page = as_role("operator")
    expect(page.get_by_role("link", name="Run nightly-gold now")).to_be_visible()
    expect(page.get_by_role("link", name="Delete nightly-gold")).to_have_count(0)
    answer = page.goto(f"{stack.console_url}/profiles/demo-receiver")
    assert answer is not None
    assert answer.status == 403
    expect(page.get_by_role("alert")).to_contain_text("connection profiles are for admins")
    assert "PARTNER_DEMO_RECEIVER_TOKEN" not in page.content()
    # What the page does not offer, a confirmation opened anyway (a bookmark) refuses with the use case's reason,
    # with no button to click.
    for action, button in (("delete", "Delete"), ("copy", "Copy")):
        answer = page.goto(f"{stack.console_url}/exports/nightly-gold/{action}")
        assert answer is not None
        assert answer.status == 403
        expect(page.get_by_role("alert")).to_contain_text(
            f"You may not {action} this export definition: role 'operator' may not write."
        )
        expect(page.get_by_role("button", name=button)).to_have_count(0)


def test_an_admin_sees_a_profile_with_its_secret_write_only(as_role, stack: ConsoleStack):
    page = as_role("admin")
    page.get_by_role("link", name="Connection profiles").click()
    page.get_by_role("link", name="Open demo-receiver").click()
    token = page.get_by_label("Token", exact=True)
    expect(token).to_have_value("")
    expect(token).to_have_attribute("placeholder", "stored (hidden): leave blank to keep it")
    assert "PARTNER_DEMO_RECEIVER_TOKEN" not in page.content()


def test_copy_and_delete_ask_first(as_role, stack: ConsoleStack, stored: CatalogStores):
    page = as_role("editor")
    page.get_by_role("link", name="Copy weekly-silver").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("Copy of Weekly silver members")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status")).to_contain_text("Copied")
    expect(page.get_by_role("heading", name="Copy of Weekly silver members")).to_be_visible()
    copy = stored.definitions.get(ExportDefinition, "copy-of-weekly-silver-members")
    assert copy.schedule.enabled is False
    assert copy.template == "tier-upsert"

    page.goto(f"{stack.console_url}/exports")
    page.get_by_role("link", name="Delete copy-of-weekly-silver-members").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("This cannot be undone")
    page.get_by_role("link", name="Cancel").click()
    assert stored.definitions.find(ExportDefinition, "copy-of-weekly-silver-members") is not None
    page.get_by_role("link", name="Delete copy-of-weekly-silver-members").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".notice")).to_have_text("The export definition was deleted.")
    assert stored.definitions.find(ExportDefinition, "copy-of-weekly-silver-members") is None


@pytest.fixture
def other_site(stack: ConsoleStack) -> Iterator[str]:
    """A page on another origin whose form posts to the console, as a forged request would (no CSRF token)."""
    forged = (
        f'<!doctype html><html lang="en"><title>x</title><body><form id="f" method="post" '
        f'action="{stack.console_url}/exports/weekly-silver/delete"><input name="x" value="1"></form>'
        '<script>document.getElementById("f").submit()</script></body></html>'
    ).encode()

    class Forger(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(forged)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_form_posted_from_another_site_without_the_csrf_token_is_refused(
    as_role, stack: ConsoleStack, stored: CatalogStores, other_site: str
):
    page = as_role("admin")  # signed in: the session cookie exists in this browser
    with page.expect_response(f"{stack.console_url}/exports/weekly-silver/delete") as posted:
        page.goto(other_site)
    assert posted.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("Refused")
    assert stored.definitions.find(ExportDefinition, "weekly-silver") is not None
    # The same post from the console's own origin, with the session cookie but without the token: refused too.
    answer = page.request.post(f"{stack.console_url}/exports/weekly-silver/delete", form={"x": "1"})
    assert answer.status == 403
    assert "CSRF token is missing or wrong" in answer.text()
    assert stored.definitions.find(ExportDefinition, "weekly-silver") is not None
