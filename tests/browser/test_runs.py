"""Run now, after a confirmation that says what will run; the run's page follows it live to succeeded."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from devtools.up import ConsoleStack
from tests.browser.conftest import MEMBERS, screenshot

pytestmark = pytest.mark.e2e


def test_run_now_asks_first_then_its_page_follows_the_run_to_succeeded(as_role, stack: ConsoleStack):
    assert stack.receiver is not None
    page = as_role("operator")
    page.get_by_role("link", name="Run demo-all-members now").click()

    confirmation = page.get_by_role("alertdialog")
    expect(confirmation).to_contain_text("query 'all-members' (all)")
    expect(confirmation).to_contain_text(re.compile(r"Parameters\s*none"))
    expect(confirmation).to_contain_text(f"POST {stack.receiver.url}/v1/members/bulk, 500 members per request")
    confirmation.get_by_role("button", name="Run now").click()

    expect(page.get_by_role("heading", name="Run")).to_be_visible()
    status = page.locator("#run-status [data-status]")
    expect(status).to_have_text("succeeded", timeout=120_000)  # the page polls the run while it goes
    expect(page.locator("#run-counts")).to_have_text(f"{MEMBERS} delivered, 0 failed of {MEMBERS} read")
    expect(page.locator("#run-live")).to_contain_text("demo-operator")
    expect(page.locator("#dead-letters")).to_contain_text("No dead letter", timeout=60_000)
    assert len(stack.receiver.accepted_member_ids()) == MEMBERS
    screenshot(page, "run")
    run_url = page.url

    # Cancelling a finished run is refused, with the reason, after its confirmation.
    page.goto(f"{run_url}/cancel")
    page.get_by_role("button", name="Cancel the run").click()
    expect(page.get_by_role("alert")).to_contain_text("has finished (succeeded)")

    page.goto(f"{stack.console_url}/runs?definition=demo-all-members")
    row = page.locator("tbody tr").first
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("manual")
    expect(row).to_contain_text(str(MEMBERS))
