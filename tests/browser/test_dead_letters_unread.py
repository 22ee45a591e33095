"""A run's dead letters that could not be read: the run's page shows why in their place, although the dead-letters
page answers 503 (htmx swaps no error answer unless the part asks for it: ``data-swap-unavailable``, console.js).

Against the admin API in-process on a real HTTP server (its dead letters' reads replaced: Kafka down), not the
package's stack: nothing of the pipeline is needed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.admin_app import in_process_api, seed
from tests.integration.test_cancel_replay_kafka_unavailable import RUNS, Unreadable, _console, _letters
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
        context.dead_letters = lambda: _letters(original, 2)
        with serving(api.app) as url:
            session = browser.new_context()
            try:
                page = session.new_page()
                page.goto(f"{url}/console/sign-in")
                page.get_by_label("API token").fill(api.tokens["operator"])
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("heading", name="Exports", exact=True)).to_be_visible()
                page.goto(f"{url}/console/runs/{original}")
                expect(page.locator("#dead-letters")).to_contain_text("HTTP 400")  # read: as before
                context.dead_letters = Unreadable
                with page.expect_response(lambda answer: answer.url.endswith("/dead-letters")) as answered:
                    page.goto(f"{url}/console/runs/{unread}")
                assert answered.value.status == 503
                # Without data-swap-unavailable: "Reading the dead-letter topic…" for ever.
                expect(page.locator("#dead-letters .warning")).to_have_text(
                    "the dead letters cannot be read now: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:9']"
                )
            finally:
                session.close()
