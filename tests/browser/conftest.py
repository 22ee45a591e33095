"""The console's browser tests: one stack (``make up``'s, on the session's Kafka broker) and one headless Chromium
(Debian's, driven by Playwright) for the whole session; a fresh browser context (cookies) per signed-in role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from devtools.browser import chromium_path
from devtools.up import ConsoleStack
from shared.catalog import CatalogStores

#: How the tests launch Chromium: headless, no sandbox (root in CI), nothing phoning home. Playwright gives it
#: a fresh user-data directory of its own at each launch.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MEMBERS = 2_000
#: The deadline of every action and every assertion on a page (``expect``). Playwright's assertions wait 5 s by
#: default, not the browser context's default timeout: the operator's test failed once in a loaded CI run (message
#: unseen), every step of it an assertion on a page (signing in, the exports list) held to those 5 s.
PAGE_TIMEOUT_MS = 15_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


@pytest.fixture(scope="package")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """``make up``'s stack: demo data, the four services and the admin API (with the console)."""
    with ConsoleStack(tmp_path_factory.mktemp("console"), bootstrap=kafka_bootstrap, members=MEMBERS) as running:
        yield running


@pytest.fixture(scope="package")
def stored(stack: ConsoleStack) -> Iterator[CatalogStores]:
    """The stack's catalog, read directly to check what the console stored."""
    stores = CatalogStores.from_url(stack.env["EXPORT_CATALOG_URL"])
    yield stores
    stores.close()


# Package scope, not session: Playwright's sync API runs an event loop on this thread while it is open, which
# would make every later test's asyncio.run() fail; the stack's processes stop with the browser tests too.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=PAGE_TIMEOUT_MS)  # global to Playwright's expect, which only these tests use
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def axe() -> Axe:
    return Axe()


def sign_in(context: BrowserContext, stack: ConsoleStack, role: str) -> Page:
    """A page of ``context`` signed in to the console with the demo token of ``role``."""
    page = context.new_page()
    page.goto(f"{stack.console_url}/sign-in")
    page.get_by_label("API token").fill(stack.tokens[role])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exports", exact=True)).to_be_visible()
    return page


@pytest.fixture
def as_role(browser: Browser, stack: ConsoleStack) -> Iterator[Callable[[str], Page]]:
    """Opens a fresh browser context signed in as a role; every context is closed after the test."""
    contexts: list[BrowserContext] = []

    def open_as(role: str) -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        contexts.append(context)
        return sign_in(context, stack, role)

    yield open_as
    for context in contexts:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """Write ``docs/console/<name>.png`` (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
