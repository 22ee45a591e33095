"""axe-core finds no serious or critical accessibility violation on any page of the console."""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from devtools.up import ConsoleStack
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import SavedQuery

pytestmark = pytest.mark.e2e

PAGES = [
    "/exports",
    "/exports?name_contains=gold&priority=high",
    "/exports/new",
    "/exports/nightly-gold?step=filter",
    "/exports/nightly-gold?step=destination",
    "/exports/nightly-gold?step=schedule",
    "/exports/nightly-gold?step=notifications",
    "/exports/nightly-gold/run",
    "/exports/nightly-gold/copy",
    "/exports/nightly-gold/delete",
    "/runs",
    "/templates",
    "/templates/tier-upsert",
    "/templates/new",
    "/queries",
    "/queries/members-of-tier",
    "/queries/new",
    "/profiles",
    "/profiles/demo-receiver",
    "/profiles/new",
    "/no-such-page",
]


#: What htmx marks while a request of an element is out and while its answer is swapped in and settled.
HTMX_BUSY = ".htmx-request, .htmx-swapping, .htmx-settling"


def settled(page: Page) -> None:
    """Wait until the page has loaded and htmx has no request out and nothing being swapped in (a part the page
    asks for on load, as a run's dead letters, is in it): the page as a user sees it once it stops changing.

    Not ``networkidle``: that waits for 500 ms without a request on every page, 10 s of this test's 16 s.
    """
    page.wait_for_function(f"() => document.readyState === 'complete' && !document.querySelector('{HTMX_BUSY}')")


def serious(page: Page, axe: Axe) -> list[str]:
    """The serious and critical violations axe-core finds on the page as it is now."""
    found: list[dict[str, Any]] = axe.run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[node['target'] for node in v['nodes']][:3]}"
        for v in found
        if v["impact"] in {"serious", "critical"}
    ]


def test_no_page_has_a_serious_or_critical_violation(as_role, stack: ConsoleStack, axe: Axe):
    problems: dict[str, list[str]] = {}
    control = as_role("viewer").context.new_page()
    control.set_content('<html lang="en"><title>t</title><body><main><img src="data:,"></main></body></html>')
    assert any(found.startswith("image-alt") for found in serious(control, axe)), "axe-core runs and finds one"
    sign_in_page = control.context.new_page()
    sign_in_page.goto(f"{stack.console_url}/sign-in")
    problems["/sign-in"] = serious(sign_in_page, axe)

    page = as_role("admin")
    for path in PAGES:
        page.goto(f"{stack.console_url}{path}")
        settled(page)
        problems[path] = serious(page, axe)

    # A page with refusals shown inline, and a run's page.
    page.goto(f"{stack.console_url}/exports/nightly-gold?step=schedule")
    page.get_by_label("Advanced Mode").check()
    page.get_by_label("CRON Expression", exact=True).fill("99 * * * *")
    page.get_by_role("tabpanel", name="3. Schedule").get_by_role("button", name="Save").click()
    expect(page.locator("#cron-error")).to_be_visible()
    problems["/exports/nightly-gold (refused save)"] = serious(page, axe)
    page.goto(f"{stack.console_url}/exports/christmas-bronze/run")
    page.get_by_role("button", name="Run now").click()
    expect(page.get_by_role("heading", name="Run")).to_be_visible()
    settled(page)
    problems["/runs/<id>"] = serious(page, axe)

    assert {path: found for path, found in problems.items() if found} == {}


def test_a_refused_save_of_a_page_someone_else_changed_since_puts_the_focus_on_its_notice(
    as_role, stack: ConsoleStack, stored: CatalogStores
):
    """A keyboard or screen-reader user is taken to why nothing was saved: the stale page's notice gets the focus
    when the page loads, as a refusal's summary does (the stale notice has no summary of problems of its own)."""
    page = as_role("admin")
    page.goto(f"{stack.console_url}/queries/members-of-tier")
    settled(page)
    query = stored.definitions.get(SavedQuery, "members-of-tier")
    changed = query.model_copy(update={"label": f"{query.label or query.name} (changed meanwhile)"})
    stored.definitions.apply_versioned(changed, existing=True)  # someone else's save, after the page was opened
    page.get_by_label("Label").fill("Members of a tier, renamed here")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#stale")).to_contain_text("Someone else changed this query since you opened it")
    expect(page.locator("#stale")).to_be_focused()
    assert stored.definitions.get(SavedQuery, "members-of-tier").label == changed.label  # nothing of the form saved
