"""A run's page finds a member by key: its last delivery by the run's export, in place, with no serious or
critical accessibility violation; an unknown key is said as such."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from devtools.up import ConsoleStack
from tests.browser.test_accessibility import serious

pytestmark = pytest.mark.e2e


def test_a_runs_page_finds_a_member_by_key(as_role, stack: ConsoleStack, axe: Axe):
    page = as_role("operator")
    page.get_by_role("link", name="Run demo-all-members now").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Run now").click()
    expect(page.locator("#run-status [data-status]")).to_have_text("succeeded", timeout=120_000)

    search = page.get_by_role("search", name="Member delivery")
    search.get_by_label("Member key").fill("1")
    search.get_by_role("button", name="Look up").press("Enter")  # the keyboard works it
    found = page.locator("#member-delivery")
    expect(found.locator("[data-outcome]")).to_have_text("delivered")
    expect(found).to_contain_text(page.url.rsplit("/", 1)[-1][:8])  # by this run
    assert serious(page, axe) == []

    search.get_by_label("Member key").fill("no-such-member")
    search.get_by_role("button", name="Look up").click()
    expect(found.get_by_role("status")).to_contain_text("holds no delivery of member 'no-such-member'")
