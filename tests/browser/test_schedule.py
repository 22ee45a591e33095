"""The schedule composer fills the CRON field as the README's table says; Advanced Mode checks as you type."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from devtools.up import ConsoleStack
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def composer_table() -> list[tuple[dict[str, Any], str]]:
    """The README's composer table (section Schedules): each ``repeat:`` shape with the CRON it fills."""
    rows = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `{every:"):
            continue
        shapes_column, _, cron_column = line.strip("|").split("|")[:3]
        shapes = [yaml.safe_load(shape) for shape in re.findall(r"`(\{every:[^`]*\})`", shapes_column)]
        crons = re.findall(r"`([^`]+)`", cron_column)
        if "`day: last`" in shapes_column:  # "(or `day: last`)": the same shape on the last day
            shapes.append(shapes[0] | {"day": "last"})
        assert len(shapes) == len(crons), line
        rows += list(zip(shapes, crons, strict=True))
    return rows


def compose(page: Page, shape: dict[str, Any]) -> None:
    """Choose a composer shape in the Schedule step, as a person would with the controls."""
    page.get_by_label("Interval").select_option(str(shape["every"]))
    if "minute" in shape:
        page.get_by_label("Minute past the hour").fill(str(shape["minute"]))
    if "weekday" in shape:
        page.get_by_label("Weekday").select_option(shape["weekday"])
    if "day" in shape:
        page.get_by_label("Day of the month").select_option(str(shape["day"]))
    if "month" in shape:
        page.get_by_label("Month", exact=True).select_option(str(shape["month"]))
    if "time" in shape:
        page.get_by_label("Time", exact=True).fill(shape["time"])


def open_schedule(page: Page, stack: ConsoleStack, name: str) -> None:
    page.goto(f"{stack.console_url}/exports/{name}?step=schedule")
    expect(page.get_by_role("tabpanel", name="3. Schedule")).to_be_visible()


def test_every_composer_interval_fills_the_cron_of_the_readme(as_role, stack: ConsoleStack):
    rows = composer_table()
    assert {shape["every"] for shape, _ in rows} == {"15min", "30min", "hour", "day", "week", "month", "year"}
    page = as_role("editor")
    open_schedule(page, stack, "weekly-silver")
    cron = page.get_by_label("CRON Expression", exact=True)
    for shape, expected in rows:
        compose(page, shape)
        expect(cron).to_have_value(expected)
        expect(cron).to_have_attribute("readonly", "")


def test_an_invalid_advanced_mode_expression_is_shown_inline_and_not_saved(
    as_role, stack: ConsoleStack, stored: CatalogStores
):
    before = stored.definitions.get(ExportDefinition, "nightly-gold").schedule
    page = as_role("editor")
    open_schedule(page, stack, "nightly-gold")
    page.get_by_label("Advanced Mode").check()
    cron = page.get_by_label("CRON Expression", exact=True)
    cron.fill("99 * * * *")
    expect(page.locator("#schedule-preview")).to_contain_text("'99 * * * *' is not a valid CRON expression")
    cron.fill("0 3 * * 1-5")
    expect(page.locator("#schedule-preview")).to_contain_text("Valid CRON expression")
    cron.fill("99 * * * *")
    page.get_by_role("tabpanel", name="3. Schedule").get_by_role("button", name="Save").click()
    expect(page.locator("#cron-error")).to_contain_text("is not a valid CRON expression")
    expect(page.get_by_label("CRON Expression", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("CRON Expression", exact=True)).to_have_value(
        "99 * * * *"
    )  # what was typed, to correct it
    assert stored.definitions.get(ExportDefinition, "nightly-gold").schedule == before


def test_a_dst_gap_is_said_next_to_the_fire_time_it_moves(as_role, stack: ConsoleStack):
    page = as_role("editor")
    page.goto(f"{stack.console_url}/exports/new?step=schedule")
    page.get_by_label("Recurrence").select_option("repeat")
    compose(page, {"every": "day", "time": "02:30"})
    page.get_by_label("Time Zone").fill("Europe/Paris")
    page.get_by_label("From", exact=True).fill("2027-03-27")  # Paris springs forward on 28 March 2027
    preview = page.locator("#schedule-preview")
    expect(preview).to_contain_text("02:30 does not exist on 2027-03-28 (DST gap): fires at 03:00 instead")
    expect(preview.locator("tbody tr").nth(1)).to_contain_text("Sun 2027-03-28 03:00 CEST")
    expect(preview.locator("tbody tr").nth(1)).to_contain_text("Sun 2027-03-28 01:00 UTC")
