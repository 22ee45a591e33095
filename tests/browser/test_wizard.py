"""A definition made through the four steps, with the keyboard alone, is what its YAML manifest makes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from devtools.up import ConsoleStack
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition, stored_form
from tests.browser.conftest import screenshot
from tests.browser.keyboard import focused, tab_to

pytestmark = pytest.mark.e2e

MANIFEST = """
kind: ExportDefinition
name: wizard-export-yaml
spec:
  label: Wizard weekly export
  business_unit: france
  priority: high
  query: all-members
  template: members-bulk-upsert
  schedule: {enabled: true, timezone: Europe/Paris, repeat: {every: week, weekday: wed, time: "06:30"}}
  notifications:
    error: {enabled: true, recipients: [oncall@example.com]}
"""


def test_a_definition_made_through_the_four_steps_is_what_its_manifest_makes(
    as_role, stack: ConsoleStack, stored: CatalogStores, tmp_path
):
    page = as_role("editor")
    tab_to(page, 'a[href="/console/exports/new"]')
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New export definition")).to_be_visible()

    tab_to(page, "#label")
    page.keyboard.type("Wizard weekly export")
    tab_to(page, "#name")
    page.keyboard.type("wizard-export")
    tab_to(page, "#business_unit")
    page.keyboard.type("france")
    tab_to(page, "#priority")
    page.keyboard.type("High")

    # Step 1, Filter: the query (its parameters and columns load as it is chosen).
    tab_to(page, "#query")
    page.keyboard.type("all-members")
    expect(page.locator("#query-fields")).to_contain_text("first_name")
    screenshot(page, "step-1-filter")
    tab_to(page, '#panel-filter button[data-goto="destination"]')
    page.keyboard.press("Enter")
    assert focused(page, "#template"), "Next moves the focus into the next step"

    # Step 2, Destination: the HTTP operation, with its method, URL and batch size shown.
    page.keyboard.type("Members bulk")
    expect(page.locator("#template-info")).to_contain_text("500 members per request")
    screenshot(page, "step-2-destination")
    tab_to(page, '#panel-destination button[data-goto="schedule"]')
    page.keyboard.press("Enter")
    assert focused(page, "#enabled")

    # Step 3, Schedule: enabled, repeat every week on Wednesday at 06:30, Paris time.
    page.keyboard.press("Space")
    tab_to(page, "#recurrence")
    page.keyboard.type("Repeat")
    tab_to(page, "#every")
    page.keyboard.type("Week")
    tab_to(page, "#weekday")
    page.keyboard.type("Wed")
    tab_to(page, "#time")
    page.keyboard.type("0630")
    tab_to(page, "#timezone")
    page.keyboard.press("Control+A")
    page.keyboard.type("Europe/Paris")
    expect(page.locator("#cron")).to_have_value("30 6 * * 3")
    expect(page.locator("#schedule-preview")).to_contain_text("Every Wednesday at 06:30 (Europe/Paris)")
    expect(page.locator("#schedule-preview tbody tr")).to_have_count(5)
    screenshot(page, "step-3-schedule")
    tab_to(page, '#panel-schedule button[data-goto="notifications"]')
    page.keyboard.press("Enter")
    assert focused(page, "#error_enabled")

    # Step 4, Notifications, then Save: the definition is created.
    page.keyboard.press("Space")
    tab_to(page, "#error_recipients")
    page.keyboard.type("oncall@example.com")
    screenshot(page, "step-4-notifications")
    tab_to(page, '#panel-notifications button[type="submit"]')
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Created.")
    expect(page.get_by_role("heading", name="Wizard weekly export", exact=True)).to_be_visible()

    manifest = tmp_path / "wizard.yaml"
    manifest.write_text(MANIFEST)
    applied = subprocess.run(
        [sys.executable, "-m", "shared.cli", "apply", "-f", str(manifest)],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    from_console = stored_form(stored.definitions.get(ExportDefinition, "wizard-export"))
    from_yaml = stored_form(stored.definitions.get(ExportDefinition, "wizard-export-yaml"))
    assert from_console | {"name": "-"} == from_yaml | {"name": "-"}

    page.goto(f"{stack.console_url}/exports?name_contains=wizard")
    expect(page.locator("#results tbody tr")).to_have_count(2)  # the console's and the manifest's
    expect(page.locator("#results")).to_contain_text("Every Wednesday at 06:30 (Europe/Paris)")
    page.goto(f"{stack.console_url}/exports")
    screenshot(page, "exports")
