"""The notifier with a real SMTP server: the right emails, to the right people, once."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from shared.catalog import Catalog
from shared.devtools.smtp_sink import SmtpSink
from shared.domain.catalog_objects import ExportDefinition
from shared.events import BatchOutcome, ExtractionCompleted, RunFailed, RunMissed, RunSkipped, RunStarted, Trigger

pytestmark = pytest.mark.integration

DEFINITION = ExportDefinition.model_validate(
    {
        "name": "nightly",
        "query": "q",
        "template": "t",
        "schedule": {"timezone": "America/New_York"},
        "notifications": {
            "success": {"enabled": True, "recipients": ["ops@example.com"]},
            "error": {"enabled": True, "recipients": ["oncall@example.com"]},
        },
    }
)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def notifier(catalog: Catalog, sink: SmtpSink) -> Notifier:
    catalog.apply(DEFINITION)
    mailer = SmtpMailer("127.0.0.1", sink.port, max_attempts=2, max_wait=0.1)
    return Notifier(catalog=catalog, mailer=mailer, sender="exports@example.com", link_base_url=None)


def events(outcomes: list[tuple[int, int]]):
    run_id = uuid.uuid4()
    yield RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE)
    yield ExtractionCompleted(
        run_id=run_id, definition="nightly", members=sum(map(sum, outcomes)), batches=len(outcomes)
    )
    for index, (delivered, failed) in enumerate(outcomes):
        yield BatchOutcome(
            run_id=run_id,
            definition="nightly",
            batch_index=index,
            delivered=delivered,
            failed=failed,
            error="HTTP 400: rejected" if failed else None,
        )


def test_a_successful_run_mails_the_success_recipients_once(notifier: Notifier, sink: SmtpSink):
    all_events = list(events([(10, 0), (10, 0)]))
    for event in all_events + all_events:  # every event redelivered
        notifier.handle(event)
    [mail] = sink.received()
    assert mail.recipients == ["ops@example.com"]
    assert mail.subject == "[member export] nightly: succeeded"
    assert "Delivered: 20" in mail.text()
    assert "America/New_York" in mail.text()


def test_a_run_with_errors_mails_the_error_recipients(notifier: Notifier, sink: SmtpSink):
    for event in events([(10, 0), (0, 10)]):
        notifier.handle(event)
    [mail] = sink.received()
    assert mail.recipients == ["oncall@example.com"]
    assert "completed with errors" in mail.subject
    assert "HTTP 400: rejected" in mail.text()


def test_a_failed_run_mails_the_reason(notifier: Notifier, sink: SmtpSink):
    run_id = uuid.uuid4()
    notifier.handle(RunFailed(run_id=run_id, definition="nightly", reason="query 'q' failed: no such table: x"))
    [mail] = sink.received()
    assert mail.recipients == ["oncall@example.com"]
    assert "query 'q' failed: no such table: x" in mail.text()


def test_a_restarted_notifier_sends_no_duplicate(catalog: Catalog, sink: SmtpSink, notifier: Notifier):
    all_events = list(events([(5, 0)]))
    for event in all_events:
        notifier.handle(event)
    restarted = Notifier(
        catalog=Catalog.from_url(str(catalog.engine.url.render_as_string(hide_password=False))),
        mailer=notifier.mailer,
        sender="exports@example.com",
        link_base_url=None,
    )
    for event in all_events:
        restarted.handle(event)
    restarted.catalog.close()
    assert len(sink.received()) == 1


def test_an_email_that_could_not_be_sent_goes_out_with_a_later_event(
    catalog: Catalog, sink: SmtpSink, notifier: Notifier
):
    all_events = list(events([(5, 0)]))
    down = SmtpMailer("127.0.0.1", 9, max_attempts=1)  # nothing listens on port 9
    broken = Notifier(catalog=catalog, mailer=down, sender="exports@example.com", link_base_url=None)
    for event in all_events:
        broken.handle(event)
    assert sink.received() == []
    notifier.handle(all_events[-1])  # a redelivery once SMTP is back
    assert len(sink.received()) == 1


def test_a_missed_run_mails_the_error_recipients(notifier: Notifier, sink: SmtpSink, catalog: Catalog):
    run_id = uuid.uuid4()
    due = datetime(2026, 7, 4, 6, 0, tzinfo=UTC)
    missed = RunMissed(
        run_id=run_id,
        definition="nightly",
        scheduled_for=due,
        reason="due at 2026-07-04T06:00:00+00:00 while no scheduler could fire it",
    )
    notifier.handle(missed)
    notifier.handle(missed)
    [mail] = sink.received()
    assert mail.recipients == ["oncall@example.com"]
    assert mail.subject == "[member export] nightly: missed"
    assert "while no scheduler could fire it" in mail.text()
    record = catalog.get_run(run_id)
    assert record is not None
    assert record.status.value == "missed"
    assert record.scheduled_for == due


def test_a_skipped_run_is_recorded_without_email(notifier: Notifier, sink: SmtpSink, catalog: Catalog):
    run_id = uuid.uuid4()
    notifier.handle(
        RunSkipped(
            run_id=run_id,
            definition="nightly",
            scheduled_for=datetime(2026, 7, 4, tzinfo=UTC),
            reason="previous run x was still active",
        )
    )
    assert sink.received() == []
    record = catalog.get_run(run_id)
    assert record is not None
    assert record.status.value == "skipped"
