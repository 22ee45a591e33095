"""A run's dead letters that could not be read: the run's page shows why in their place, although the dead-letters
page answers 503 (htmx swaps no error answer unless the part asks for it: ``data-swap-unavailable``, console.js).

Against the admin API in-process on a real HTTP server (its dead letters' reads replaced: Kafka down), not the
package's stack: nothing of the pipeline is needed.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from shared.errors import CatalogTimedOut
from tests.admin_app import in_process_api, seed
from tests.integration.test_cancel_replay_kafka_unavailable import RUNS, Letters, Unreadable, _console, _letters
from tests.integration.test_kafka_unavailable import serving

pytestmark = pytest.mark.e2e


def test_the_runs_page_says_why_its_dead_letters_were_not_read(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            original = uuid.UUID(client.post(RUNS).json()["run_id"])
            unread = uuid.UUID(client.post(RUNS).json()["run_id"])
        context = _console(api.app)
        context.replays = replace(context.replays, letters=lambda: _letters(original, 2))
        with serving(api.app) as url:
            session = browser.new_context()
            try:
                page = _signed_in(session.new_page(), url, api.tokens["operator"])
                page.goto(f"{url}/console/runs/{original}")
                expect(page.locator("#dead-letters")).to_contain_text("HTTP 400")  # read: as before
                context.replays = replace(context.replays, letters=Unreadable)
                with page.expect_response(lambda answer: answer.url.endswith("/dead-letters")) as answered:
                    page.goto(f"{url}/console/runs/{unread}")
                assert answered.value.status == 503
                # Without data-swap-unavailable: "Reading the dead-letter topic…" for ever.
                expect(page.locator("#dead-letters .warning")).to_have_text(
                    "the dead letters cannot be read now: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:9']"
                )
            finally:
                session.close()


def test_a_catalog_timeout_is_said_in_the_dead_letters_card_not_as_a_page_nested_in_it(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog timing out while the dead letters are listed: the card says so and the page keeps one top bar
    and one side menu; another 503 that is not the dead-letters part (no ``X-Console-Part``: the console's whole
    error page) is not swapped in (before: the whole error page, top bar, navigation and all, nested in the card)."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            run = uuid.UUID(client.post(RUNS).json()["run_id"])
        context = _console(api.app)

        def timed_out() -> Letters:
            raise CatalogTimedOut("run", None, "57014")

        context.replays = replace(context.replays, letters=timed_out)
        with serving(api.app) as url:
            session = browser.new_context()
            try:
                page = _signed_in(session.new_page(), url, api.tokens["operator"])
                with page.expect_response(lambda answer: answer.url.endswith("/dead-letters")) as answered:
                    page.goto(f"{url}/console/runs/{run}")
                assert answered.value.status == 503
                expect(page.locator("#dead-letters .warning")).to_have_text(str(CatalogTimedOut("run", None, "57014")))
                expect(page.locator("nav.side")).to_have_count(1)
                expect(page.locator("#main")).to_have_count(1)
                # A 503 that does not say it is the part (the console's error page for any other reason): not swapped.
                page.route(
                    "**/dead-letters",
                    lambda route: route.fulfill(
                        status=503, content_type="text/html", body=_whole_page(page, f"{url}/console/runs/{run}")
                    ),
                )
                # htmx says an answer it did not swap as an error (htmx:responseError), once it has decided.
                page.add_init_script(
                    "document.addEventListener('htmx:responseError', () => { window.unswapped = true; });"
                )
                page.goto(f"{url}/console/runs/{run}")
                page.wait_for_function("() => window.unswapped === true", timeout=10_000)
                expect(page.locator("#dead-letters")).to_contain_text("Reading the dead-letter topic")
                expect(page.locator("nav.side")).to_have_count(1)
            finally:
                session.close()


def _whole_page(page: Page, url: str) -> str:
    """A whole console page (top bar, navigation, main), as the console's error pages are."""
    answer = page.request.get(url)
    assert answer.ok
    return answer.text()


def _signed_in(page: Page, url: str, token: str) -> Page:
    """``page`` signed in to the console at ``url`` with ``token``."""
    page.goto(f"{url}/console/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exports", exact=True)).to_be_visible()
    return page
