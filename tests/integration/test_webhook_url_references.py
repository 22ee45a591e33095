"""A webhook channel's URL may be an ``env:NAME``/``file:PATH`` reference (as a profile's secrets): its token is then
never in the catalog. Saved when its shape and the secret-reference allow-lists allow it (refused naming the field
otherwise), shown as given (never resolved), resolved by the notifier at each send; a reference that does not resolve
fails the send with a reason naming the reference, never a secret in the ledger or the log, and is tried again after
its backoff within the webhook's attempts (sent once an operator fixes the reference, given up once they are spent); a
receiver quoting the resolved URL's token finds it masked.

Before: a reference was refused as no http(s) URL, so a Slack or Alertmanager webhook's token had to be stored in
plain text. The real app in-process (SQLite), a real HTTP receiver, the notifier on the real ledger."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.integration.test_notifier_webhooks import failed_run, ledger_rows, notifier_on

pytestmark = pytest.mark.integration

TOKEN = "T0001-B0002-SECRETTOKEN42"
VARIABLE = "PARTNER_OPS_HOOK_URL"
DEFINITIONS = "/api/v1/export-definitions"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path) as api, api.client() as client:
        seed(client)
        yield api


def saved(api: InProcessApi, url: str) -> Any:
    with api.client() as client:
        return client.put(f"{DEFINITIONS}/nightly/notifications", json={"webhooks": {"ops": {"url": url}}})


def test_a_url_reference_is_saved_and_shown_as_given_never_resolved(api: InProcessApi, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(VARIABLE, f"https://hooks.slack.com/services/{TOKEN}")

    answer = saved(api, f"env:{VARIABLE}")  # before: 422, not an http(s) URL

    assert answer.status_code == 200, answer.text
    with api.client("viewer") as client:
        read = client.get(f"{DEFINITIONS}/nightly")
        audit = client.get("/api/v1/audit", params={"object": "nightly"})
    assert read.json()["notifications"]["webhooks"]["ops"]["url"] == f"env:{VARIABLE}"
    for answer in (read, audit):
        assert answer.status_code == 200
        assert TOKEN not in answer.text
    stored = api.app.state.context.definitions.get(ExportDefinition, "nightly")
    assert stored.notifications.webhooks["ops"].url == f"env:{VARIABLE}"  # the reference, not what it names


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("env:EXPORT_CATALOG_URL", "secret reference env:EXPORT_CATALOG_URL is not allowed"),  # a service's setting
        ("file:/etc/passwd", "secret reference file:/etc/passwd is not allowed"),  # outside the allowed directories
        ("env:not a name", "String should match pattern"),  # not the shape of one
        ("file:relative/path", "String should match pattern"),
    ],
)
def test_a_url_reference_the_allow_lists_or_its_shape_refuse_is_not_saved(api: InProcessApi, url: str, said: str):
    answer = saved(api, url)

    assert answer.status_code == 422, answer.text
    assert said in answer.text


def webhook_failures(outcome: str) -> float:
    labels = {"event": "failed", "outcome": outcome}
    return REGISTRY.get_sample_value("member_export_notifier_webhooks_failed_total", labels) or 0.0


def with_hook(catalog: CatalogStores, receiver: HttpReceiver, url: str) -> None:
    hook = {"url": url, "events": ["failed"]}
    catalog.definitions.apply(
        ExportDefinition.model_validate(
            {"name": "nightly", "query": "q", "template": "t", "notifications": {"webhooks": {"ops": hook}}}
        )
    )


def test_the_notifier_sends_to_the_url_a_reference_names_resolved_at_send_time(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    with SmtpSink() as sink, HttpReceiver() as receiver:
        with_hook(catalog, receiver, f"env:{VARIABLE}")
        monkeypatch.setenv(VARIABLE, f"{receiver.url}/hooks/{TOKEN}")  # set after the save: read at the send
        notifier_on(catalog, sink).handle(failed_run()[0])
        receipts = receiver.receipts()

    assert [(r.status, r.path) for r in receipts] == [(200, f"/hooks/{TOKEN}")]


def test_a_receiver_quoting_the_resolved_urls_token_finds_it_masked_in_the_ledger_and_the_log(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    with SmtpSink() as sink, HttpReceiver(reject_status=401, refusal_detail=f"no hook /hooks/{TOKEN}") as receiver:
        with_hook(catalog, receiver, f"env:{VARIABLE}")
        monkeypatch.setenv(VARIABLE, f"{receiver.url}/hooks/{TOKEN}")
        with structlog.testing.capture_logs() as logs:
            notifier_on(catalog, sink).handle(failed_run()[0])
        assert len(receiver.receipts()) == 1

    [row] = ledger_rows(catalog)
    assert row["last_error"].startswith("HTTP 401: ")
    for where, text in {"the ledger": repr(row), "the log": repr(logs)}.items():
        assert TOKEN not in text, where  # before (a URL stored whole was masked, a reference's resolved one not)


def swept_until(notifier: Any, done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Sweep until ``done`` (the webhook's backoff here is 10 ms), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        notifier.sweep()


@pytest.mark.parametrize("named", ["unset", "not a URL"])
def test_a_url_reference_that_does_not_resolve_is_retried_and_sent_once_the_operator_fixes_it(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, named: str
):
    """Before: given up at its first attempt (lost: the file written a minute later changed nothing)."""
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", str(tmp_path))
    hook_file = tmp_path / "ops-hook"
    if named == "not a URL":
        hook_file.write_text(f"xoxb-{TOKEN}\n")  # the token alone, not the URL
    reason = {
        "unset": f"url: secret reference file:{hook_file} cannot be read (No such file or directory)",
        "not a URL": f"url: secret reference file:{hook_file} does not hold an http(s) URL without user information",
    }[named]
    retried, given_up = webhook_failures("retry"), webhook_failures("given_up")
    with SmtpSink() as sink, HttpReceiver() as receiver:
        with_hook(catalog, receiver, f"file:{hook_file}")
        with structlog.testing.capture_logs() as logs:
            notifier = notifier_on(catalog, sink)
            notifier.handle(failed_run()[0])
            [pending] = ledger_rows(catalog)
            hook_file.write_text(f"{receiver.url}/hooks/{TOKEN}\n")  # the operator's fix
            swept_until(notifier, lambda: bool(receiver.receipts()))
        receipts = receiver.receipts()

    assert pending["last_error"] == reason
    assert pending["gave_up_at"] is None
    assert pending["next_attempt_at"] is not None  # tried again after its backoff
    assert webhook_failures("retry") == retried + 1
    assert webhook_failures("given_up") == given_up
    assert [(r.status, r.path) for r in receipts] == [(200, f"/hooks/{TOKEN}")]
    [sent] = ledger_rows(catalog)
    assert sent["sent_at"] is not None
    assert [(line["error"], line["given_up"]) for line in logs if line["event"] == "webhook not delivered"] == [
        (reason, False)
    ]
    assert TOKEN not in repr(logs)


def test_a_url_reference_never_fixed_is_given_up_once_its_attempts_are_spent(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(VARIABLE, raising=False)
    reason = f"url: secret reference env:{VARIABLE} names an unset environment variable"
    given_up = webhook_failures("given_up")
    with SmtpSink() as sink, HttpReceiver() as receiver:
        with_hook(catalog, receiver, f"env:{VARIABLE}")
        notifier = notifier_on(catalog, sink, max_attempts=3)
        notifier.handle(failed_run()[0])
        swept_until(notifier, lambda: ledger_rows(catalog)[0]["gave_up_at"] is not None)
        notifier.sweep()  # given up: not tried again
        assert receiver.receipts() == []

    [row] = ledger_rows(catalog)
    assert (row["last_error"], row["attempts"]) == (reason, 3)
    assert webhook_failures("given_up") == given_up + 1
