"""Webhook notifications, recovery notices and missed-run digests, with a real HTTP receiver and SMTP server.

The receiver verifies every signature with the ``standardwebhooks`` reference library; the catalog is SQLite
and PostgreSQL (the ``catalog`` fixture), so the ledger is the real one.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from devtools.http_receiver import HttpReceiver, Receipt
from devtools.processes import wait_until
from devtools.smtp_sink import SmtpSink
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from services.notifier.webhook_delivery import WebhookNotifications
from services.notifier.webhook_sender import WebhookSender
from shared.catalog import CatalogStores
from shared.catalog.tables import NotificationRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.destinations import DestinationPolicy
from shared.domain.masking import MASK
from shared.events import AnyRunEvent, BatchOutcome, ExtractionCompleted, RunFailed, RunMissed, RunStarted, Trigger
from shared.outbound.backoff import Backoff

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"a test signing key of 32 bytes!!").decode()
#: Channels name their secret by reference; the notifier resolves it (PARTNER_ is an allowed prefix by default).
SECRET_VARIABLE = "PARTNER_TEST_HOOKS_SIGNING_SECRET"
LOCAL = DestinationPolicy.parse("127.0.0.1")


@pytest.fixture(autouse=True)
def signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


def definition(receiver: HttpReceiver, **channel: Any) -> ExportDefinition:
    return ExportDefinition.model_validate(
        {
            "name": "nightly",
            "query": "q",
            "template": "t",
            "notifications": {
                "error": {"enabled": True, "recipients": ["oncall@example.com"]},
                "webhooks": {
                    "ops": {
                        "url": f"{receiver.url}/hooks/ops",
                        "signing_secret": f"env:{SECRET_VARIABLE}",
                        "events": ["started", "succeeded", "failed", "missed", "recovered"],
                    }
                    | channel
                },
            },
        }
    )


def notifier_on(
    catalog: CatalogStores, sink: SmtpSink, policy: DestinationPolicy = LOCAL, max_attempts: int = 5
) -> Notifier:
    """A notifier on ``catalog``'s stores, mailing to ``sink``, with webhooks retried within milliseconds and a
    failed email due again at once."""
    webhooks = WebhookNotifications(
        catalog.runs,
        WebhookSender(policy),
        backoff=Backoff(initial=0.01, maximum=0.01),
        max_attempts=max_attempts,
        link_base_url="https://exports.example.com",
        clock=lambda: datetime.now(UTC),
    )
    return Notifier(
        definitions=catalog.definitions,
        runs=catalog.runs,
        watermarks=catalog.extraction,
        mailer=SmtpMailer("127.0.0.1", sink.port, max_attempts=2, max_wait=0.1),
        sender="exports@example.com",
        link_base_url=None,
        webhooks=webhooks,
        email_backoff=Backoff(initial=0.0, maximum=0.0),
    )


def succeeded_run() -> list[AnyRunEvent]:
    run_id = uuid.uuid4()
    return [
        RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE),
        ExtractionCompleted(run_id=run_id, definition="nightly", members=3, batches=1),
        BatchOutcome(run_id=run_id, definition="nightly", batch_index=0, delivered=3, failed=0),
    ]


def failed_run() -> list[AnyRunEvent]:
    return [RunFailed(run_id=uuid.uuid4(), definition="nightly", reason="query 'q' failed")]


def handled_after_a_restart(catalog: CatalogStores, sink: SmtpSink, poll: list[AnyRunEvent]) -> None:
    """``poll`` handled by a restarted notifier (on a catalog opened again), then its sweep."""
    reopened = CatalogStores.from_url(catalog.database.engine.url.render_as_string(hide_password=False))
    try:
        restarted = notifier_on(reopened, sink)
        restarted.handle_all(poll)
        restarted.sweep()
    finally:
        reopened.close()


def verified(receipt: Receipt) -> dict[str, Any]:
    """The receipt's payload once its Standard Webhooks signature checks out (raises otherwise)."""
    payload = Webhook(SECRET).verify(receipt.raw, dict(receipt.headers.items()))
    assert isinstance(payload, dict)
    return payload


def test_webhooks_are_signed_and_sent_once_per_run_and_event_across_a_restart(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver))
    run = succeeded_run()
    first = notifier_on(catalog, sink)
    for event in run + run:  # every event redelivered
        first.handle(event)
    handled_after_a_restart(catalog, sink, run)
    started, succeeded = (verified(r) for r in receiver.receipts())
    assert [started["type"], succeeded["type"]] == ["member_export.run.started", "member_export.run.succeeded"]
    assert succeeded["data"]["run_id"] == str(run[0].run_id)
    assert (succeeded["data"]["delivered"], succeeded["data"]["failed"]) == (3, 0)
    assert succeeded["data"]["link"] == f"https://exports.example.com/runs/{run[0].run_id}"
    assert {r.path for r in receiver.receipts()} == {"/hooks/ops"}


def test_a_run_started_and_finished_within_one_poll_still_has_its_started_event(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver))
    notifier_on(catalog, sink).handle_all(succeeded_run())
    assert [verified(r)["type"] for r in receiver.receipts()] == [
        "member_export.run.started",
        "member_export.run.succeeded",
    ]


def test_a_failed_webhook_is_retried_after_a_restart_with_the_same_webhook_id(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["failed"]))
    receiver.state.fail_first = 1  # the receiver is down for the first attempt
    run = failed_run()
    notifier_on(catalog, sink).handle(run[0])
    assert [r.status for r in receiver.receipts()] == [503]
    restarted = notifier_on(catalog, sink)
    # Its sweep retries it once its backoff (milliseconds here) is over.
    wait_until(lambda: bool(restarted.sweep() or True) and len(receiver.receipts()) == 2, timeout=10)
    for _ in range(3):
        restarted.sweep()
        restarted.handle(run[0])
    down, delivered = receiver.receipts()
    assert delivered.status == 200
    assert verified(delivered)["data"]["status"] == "failed"
    assert down.headers["webhook-id"] == delivered.headers["webhook-id"]
    assert down.headers["webhook-timestamp"] <= delivered.headers["webhook-timestamp"]


def test_a_permanent_refusal_is_given_up_not_retried(catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver):
    catalog.definitions.apply(definition(receiver, events=["failed"]))
    receiver.state.reject_status = 404
    notifier = notifier_on(catalog, sink)
    run = failed_run()
    notifier.handle(run[0])
    notifier.sweep()
    assert [r.status for r in receiver.receipts()] == [404]
    # Given up: not to be sent again (a notification waiting for a retry would be claimable).
    assert not catalog.runs.claim_notification(run[0].run_id, "webhook:ops:failed", ["ops"])


def test_the_ssrf_guard_refuses_a_webhook_to_a_private_address_at_connect_time(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["failed"]))
    notifier = notifier_on(catalog, sink, policy=DestinationPolicy())  # 127.0.0.1 not allowed
    run = failed_run()
    notifier.handle(run[0])
    notifier.sweep()
    assert receiver.receipts() == []
    assert not catalog.runs.claim_notification(run[0].run_id, "webhook:ops:failed", ["ops"])  # refused for good


def test_the_slack_format_is_an_incoming_webhook_message(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["failed"], format="slack", signing_secret=None))
    run = failed_run()
    notifier_on(catalog, sink).handle(run[0])
    [receipt] = receiver.receipts()
    message = receipt.body
    assert message["text"] == "[member export] nightly: failed"
    header, section = message["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "[member export] nightly: failed"}}
    assert section["type"] == "section"
    assert section["text"]["type"] == "mrkdwn"
    assert str(run[0].run_id) in section["text"]["text"]
    assert "webhook-signature" not in receipt.headers  # no secret: unsigned, but still identified
    assert receipt.headers["webhook-id"].startswith("msg_")


def test_a_success_after_failures_sends_one_recovery_notice(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["recovered"]))
    notifier = notifier_on(catalog, sink)
    fail_1, fail_2, success, success_again = failed_run(), failed_run(), succeeded_run(), succeeded_run()
    for event in fail_1 + fail_2 + success + success + success_again:
        notifier.handle(event)
    notifier.sweep()
    subjects = [mail.subject for mail in sink.received()]
    assert subjects == ["[member export] nightly: failed"] * 2 + ["[member export] nightly: recovered"]
    assert sink.received()[-1].recipients == ["oncall@example.com"]
    [recovered] = (verified(r) for r in receiver.receipts())
    assert recovered["type"] == "member_export.run.recovered"
    assert recovered["data"]["run_id"] == str(success[0].run_id)


def missed_runs(count: int, start: datetime) -> list[AnyRunEvent]:
    return [
        RunMissed(
            run_id=uuid.uuid4(),
            definition="nightly",
            scheduled_for=start + timedelta(hours=hour),
            reason="due while no scheduler could fire it",
        )
        for hour in range(count)
    ]


def test_fifty_missed_runs_make_one_digest_email_and_one_digest_webhook(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["missed"]))
    outage = missed_runs(50, datetime(2026, 7, 1, tzinfo=UTC))
    notifier = notifier_on(catalog, sink)
    notifier.handle_all(outage)
    notifier.handle_all(outage)  # the whole poll redelivered
    notifier_on(catalog, sink).sweep()  # and a restarted notifier's sweep
    [digest] = sink.received()
    assert digest.recipients == ["oncall@example.com"]
    assert digest.subject == "[member export] nightly: 50 scheduled runs missed"
    assert all(str(event.run_id) in digest.text() for event in outage)
    [webhook] = (verified(r) for r in receiver.receipts())
    assert webhook["type"] == "member_export.run.missed_digest"
    assert webhook["data"]["count"] == 50
    assert {m["run_id"] for m in webhook["data"]["missed"]} == {str(e.run_id) for e in outage}


def test_a_few_missed_runs_are_sent_one_by_one(catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver):
    catalog.definitions.apply(definition(receiver, events=["missed"]))
    notifier = notifier_on(catalog, sink)
    notifier.handle_all(missed_runs(3, datetime(2026, 7, 1, tzinfo=UTC)))  # the threshold is "more than 3"
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: missed"] * 3
    assert [json.loads(r.raw)["type"] for r in receiver.receipts()] == ["member_export.run.missed"] * 3


def test_a_digest_that_could_not_be_mailed_goes_out_once_with_the_sweep(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(definition(receiver, events=["failed"]))
    outage = missed_runs(10, datetime(2026, 7, 1, tzinfo=UTC))
    broken = notifier_on(catalog, sink)
    broken.mailer = SmtpMailer("127.0.0.1", 9, max_attempts=1)  # nothing listens on port 9
    broken.handle_all(outage)
    assert sink.received() == []
    notifier_on(catalog, sink).sweep()
    [digest] = sink.received()
    assert digest.subject == "[member export] nightly: 10 scheduled runs missed"


def ledger_rows(catalog: CatalogStores) -> list[dict[str, Any]]:
    """Every row of the notifications ledger, column by column."""
    with catalog.database.transaction() as session:
        rows = session.scalars(select(NotificationRow)).all()
        return [{c.key: getattr(row, c.key) for c in NotificationRow.__table__.columns} for row in rows]


@pytest.mark.parametrize("status", [401, 503])  # given up at once; retried by the sweep, then given up
def test_a_receiver_quoting_the_signature_and_the_secret_leaves_them_in_no_ledger_row_or_log_line(
    catalog: CatalogStores, sink: SmtpSink, status: int
):
    key = SECRET.removeprefix("whsec_")  # what signs: as secret as the whole
    # A careless receiver: its refusal quotes the signature it got, the secret it verifies with (as is, and its
    # key percent-encoded and upper-cased), the path it was called on, and all the request's headers.
    detail = f"verified with {SECRET} = {urllib.parse.quote(key, safe='').upper()} at /hooks/ops"
    with HttpReceiver(
        reject_status=status, quote_headers=("webhook-signature",), refusal_detail=detail, echo_headers=True
    ) as receiver:
        catalog.definitions.apply(definition(receiver, events=["failed"]))
        notifier = notifier_on(catalog, sink, max_attempts=2)
        with structlog.testing.capture_logs() as logs:
            notifier.handle(failed_run()[0])
            # A 503 is tried again by the sweep once its backoff (milliseconds) is over: two attempts in all.
            wait_until(
                lambda: bool(notifier.sweep() or True) and any(line.get("given_up") for line in logs),
                timeout=10,
                what="the notification given up",
            )
        receipts = receiver.receipts()
    assert len(receipts) == (1 if status == 401 else 2)
    assert all(verified(r) for r in receipts)  # the receiver got, and quoted, real signatures
    signatures = [r.headers["webhook-signature"] for r in receipts]

    failures = [line for line in logs if line["event"] == "webhook not delivered"]
    assert len(failures) == len(receipts)
    rows = ledger_rows(catalog)  # the error email's, and the webhook's
    [row] = [row for row in rows if row["kind"] == "webhook:ops:failed"]
    # The ledger and the log say the status and what the receiver said; the signature, the secret and the
    # channel's path are masked.
    error = row["last_error"]
    assert error == failures[-1]["error"]
    assert error.startswith(f'HTTP {status}: {{"error": "webhook-signature {MASK} is not accepted", ')
    assert f'"detail": "verified with {MASK} = {MASK} at {MASK}"' in error
    for where, text in {"the ledger": repr(rows), "the log": repr(logs)}.items():
        for secret in (SECRET, key, urllib.parse.quote(key, safe=""), "/hooks/ops", *signatures):
            assert secret.lower() not in text.lower(), f"{secret} in {where}"
        for signature in signatures:
            assert signature.removeprefix("v1,") not in text, f"a signature in {where}"
