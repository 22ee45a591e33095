"""The notifier with a real SMTP server: the right emails, to the right people, once."""

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from prometheus_client import REGISTRY
from pydantic import SecretStr

from devtools.smtp_sink import SmtpSink
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition, FailurePolicy
from shared.domain.schedule import Schedule
from shared.errors import CatalogTimedOut
from shared.events import BatchOutcome, ExtractionCompleted, RunFailed, RunMissed, RunSkipped, RunStarted, Trigger
from shared.outages import DependencyUnavailable
from shared.outbound.backoff import Backoff

pytestmark = pytest.mark.integration

#: A failed email due again at once (not after its backoff: up to 30 s for a second attempt).
NO_BACKOFF = Backoff(initial=0.0, maximum=0.0)

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


def notifier_on(catalog: CatalogStores, mailer: SmtpMailer, **options: Any) -> Notifier:
    """A notifier on ``catalog``'s stores, sending through ``mailer``."""
    return Notifier(
        definitions=catalog.definitions,
        runs=catalog.runs,
        watermarks=catalog.extraction,
        mailer=mailer,
        sender="exports@example.com",
        link_base_url=None,
        **options,
    )


@pytest.fixture
def notifier(catalog: CatalogStores, sink: SmtpSink) -> Notifier:
    catalog.definitions.apply(DEFINITION)
    mailer = SmtpMailer("127.0.0.1", sink.port, max_attempts=2, max_wait=0.1)
    return notifier_on(catalog, mailer)


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


def test_a_restarted_notifier_sends_no_duplicate(catalog: CatalogStores, sink: SmtpSink, notifier: Notifier):
    all_events = list(events([(5, 0)]))
    for event in all_events:
        notifier.handle(event)
    reopened = CatalogStores.from_url(catalog.database.engine.url.render_as_string(hide_password=False))
    restarted = notifier_on(reopened, notifier.mailer)
    for event in all_events:
        restarted.handle(event)
    reopened.close()
    assert len(sink.received()) == 1


def test_an_email_that_could_not_be_sent_goes_out_with_a_later_event(
    catalog: CatalogStores, sink: SmtpSink, notifier: Notifier
):
    all_events = list(events([(5, 0)]))
    down = SmtpMailer("127.0.0.1", 9, max_attempts=1)  # nothing listens on port 9
    # Its backoff left out: an event of the run within a failed email's backoff waits for it, as the sweep does.
    broken = notifier_on(catalog, down, email_backoff=NO_BACKOFF)
    for event in all_events:
        broken.handle(event)
    assert sink.received() == []
    notifier.handle(all_events[-1])  # a redelivery once SMTP is back
    assert len(sink.received()) == 1


def test_a_missed_run_mails_the_error_recipients(notifier: Notifier, sink: SmtpSink, catalog: CatalogStores):
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
    record = catalog.runs.get_run(run_id)
    assert record is not None
    assert record.status.value == "missed"
    assert record.scheduled_for == due


def test_a_skipped_run_is_recorded_without_email(notifier: Notifier, sink: SmtpSink, catalog: CatalogStores):
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
    record = catalog.runs.get_run(run_id)
    assert record is not None
    assert record.status.value == "skipped"


def _with_policy(catalog: CatalogStores, **policy) -> None:
    catalog.definitions.apply(
        DEFINITION.model_copy(
            update={
                "failure_policy": FailurePolicy(**policy),
                "schedule": Schedule.model_validate({"enabled": True, "timezone": "UTC", "cron": "0 2 * * *"}),
            }
        )
    )


def test_a_failure_rate_over_the_threshold_fails_the_run(notifier: Notifier, sink: SmtpSink, catalog: CatalogStores):
    _with_policy(catalog, max_failure_percent=10)
    within = list(events([(90, 10)]))
    over = list(events([(80, 0), (0, 20)]))
    for event in within + over:
        notifier.handle(event)
    first, second = sink.received()
    assert "completed with errors" in first.subject  # exactly 10%: not over
    assert second.subject == "[member export] nightly: failed"
    assert "20 of 100 members failed (20.0%), over the 10% threshold" in second.text()
    record = catalog.runs.get_run(over[0].run_id)
    assert record is not None
    assert (record.status.value, record.delivered, record.failed) == ("failed", 80, 20)


def test_consecutive_failed_runs_pause_the_schedule_and_the_email_says_so(
    notifier: Notifier, sink: SmtpSink, catalog: CatalogStores
):
    _with_policy(catalog, pause_after_failed_runs=2)
    for _ in range(2):
        run_id = uuid.uuid4()
        notifier.handle(RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE))
        notifier.handle(RunFailed(run_id=run_id, definition="nightly", reason="query 'q' failed: boom"))
    first, second = sink.received()
    assert "paused" not in first.text()
    assert "Schedule: paused after 2 consecutive failed runs" in second.text()
    assert catalog.definitions.get(ExportDefinition, "nightly").schedule.enabled is False


def test_a_run_without_progress_is_failed_as_stuck_by_the_sweep(catalog: CatalogStores, sink: SmtpSink):
    catalog.definitions.apply(DEFINITION)
    later = datetime.now(UTC) + timedelta(hours=2)
    notifier = notifier_on(
        catalog,
        SmtpMailer("127.0.0.1", sink.port, max_attempts=2, max_wait=0.1),
        stuck_after_seconds=3600,
        clock=lambda: later,
    )
    finished = {"definition": "nightly", "status": "failed"}
    failed_before = REGISTRY.get_sample_value("member_export_runs_finished_total", finished) or 0.0
    started = RunStarted(run_id=uuid.uuid4(), definition="nightly", trigger=Trigger.MANUAL)
    notifier.handle(started)
    [outgoing] = notifier.sweep()
    assert REGISTRY.get_sample_value("member_export_runs_stuck") == 1
    failed = RunFailed.model_validate_json(outgoing.value)
    assert failed.reason.startswith("stuck: no progress for 7")
    notifier.handle(failed)  # as the loop does with what the sweep publishes
    [mail] = sink.received()
    assert "nightly: failed" in mail.subject
    assert "stuck: no progress" in mail.text()
    assert REGISTRY.get_sample_value("member_export_runs_finished_total", finished) == failed_before + 1
    assert notifier.sweep() == []
    assert REGISTRY.get_sample_value("member_export_runs_stuck") == 0, "failed: no longer stuck"


def test_the_sweep_sends_an_email_that_failed_earlier_once(catalog: CatalogStores, sink: SmtpSink, notifier: Notifier):
    down = SmtpMailer("127.0.0.1", 9, max_attempts=1)
    broken = notifier_on(catalog, down, email_backoff=NO_BACKOFF)  # due again at once: at the next sweep
    for event in events([(5, 0)]):
        broken.handle(event)
    assert sink.received() == []
    notifier.sweep()
    notifier.sweep()
    assert len(sink.received()) == 1


@pytest.mark.parametrize(
    "outage",
    # 10 s is over three of the retries' longest wait (3 s); the README's 30 s is the long form (`make chaos`).
    [pytest.param(10, id="10s"), pytest.param(30, id="30s", marks=pytest.mark.long)],
)
def test_an_email_arrives_after_the_smtp_server_was_down(tmp_path, outage: int):
    # Once, on SQLite: the catalog plays no part in this; the outage takes its time.
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(DEFINITION)
    sink = SmtpSink()  # not started: connections are refused
    mailer = SmtpMailer("127.0.0.1", sink.port, max_attempts=40, max_wait=3)
    notifier = notifier_on(catalog, mailer)
    comeback = threading.Timer(outage, sink.start)  # the outage being simulated, not a synchronisation
    comeback.start()
    started = time.monotonic()
    try:
        for event in events([(5, 0)]):
            notifier.handle(event)
        assert time.monotonic() - started >= outage
        [mail] = sink.received()
        assert mail.recipients == ["ops@example.com"]
    finally:
        comeback.cancel()
        comeback.join()
        sink.stop()
        catalog.close()


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_emails_go_over_starttls_or_tls_with_auth(tmp_path, security: str):
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(DEFINITION)
    with SmtpSink(security=security, tls_context=server_context, credentials=("exports", "s3cret")) as sink:
        mailer = SmtpMailer(
            "127.0.0.1",
            sink.port,
            security=security,
            username="exports",
            password=SecretStr("s3cret"),
            ca_file=str(ca_file),
            max_attempts=1,
        )
        notifier = notifier_on(catalog, mailer)
        for event in events([(5, 0)]):
            notifier.handle(event)
        [mail] = sink.received()
        assert sink.logins == ["exports"]
        assert mail.recipients == ["ops@example.com"]
    catalog.close()


def test_a_server_certificate_from_an_unknown_authority_is_refused(tmp_path):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
    with SmtpSink(security="starttls", tls_context=server_context) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, security="starttls", max_attempts=1)
        with pytest.raises(ssl.SSLCertVerificationError):
            mailer.send(EmailMessage())
        assert sink.received() == []


def test_a_poll_folded_at_once_counts_exactly_and_mails_once(
    catalog: CatalogStores, sink: SmtpSink, notifier: Notifier
):
    first, second = list(events([(10, 0), (7, 3), (5, 0)])), list(events([(4, 0)]))
    # Two runs interleaved, every event redelivered within the same poll.
    poll = [event for pair in zip(first + first, second + second + second, strict=False) for event in pair]
    poll += first[len(second + second + second) :]
    assert notifier.handle_all(poll) == [[]] * len(poll)
    finished = catalog.runs.get_run(first[0].run_id)
    assert (finished.status.value, finished.delivered, finished.failed) == ("completed_with_errors", 22, 3)
    assert finished.batches_done == 3
    other = catalog.runs.get_run(second[0].run_id)
    assert (other.status.value, other.delivered) == ("succeeded", 4)
    assert sorted(mail.subject for mail in sink.received()) == [
        "[member export] nightly: completed with errors",
        "[member export] nightly: succeeded",
    ]
    assert notifier.handle_all(first) == [[]] * len(first)  # a redelivered poll changes nothing
    assert catalog.runs.get_run(first[0].run_id) == finished
    assert len(sink.received()) == 2


def test_a_poll_whose_fold_fails_is_folded_event_by_event(catalog: CatalogStores, sink: SmtpSink, notifier: Notifier):
    class FailingBatches:
        """The runs store, except that folding a whole poll fails (a deadlock, a lost connection)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(catalog.runs, name)

        def fold_run_events(self, events: Any, starts: Any = None) -> Any:
            raise RuntimeError("could not serialize access")

    notifier.runs = FailingBatches()
    poll = list(events([(5, 0), (5, 0)]))
    assert notifier.handle_all(poll) == [[]] * len(poll)
    assert catalog.runs.get_run(poll[0].run_id).delivered == 10
    assert len(sink.received()) == 1


@pytest.mark.parametrize(
    "failure",
    [
        DependencyUnavailable("the catalog did not answer"),
        CatalogTimedOut("Run", None, "55P03"),
    ],
    ids=["outage", "timed-out"],
)
def test_a_poll_whose_fold_fails_on_the_catalog_is_not_folded_event_by_event(
    catalog: CatalogStores, notifier: Notifier, failure: Exception
):
    """The catalog away or timing out fails every event's fold again, each after waiting as long: the poll's
    events all get the failure at once (handed back on an outage, dead-lettered on a timeout), as the
    extractor's rounds stop at the first outage."""
    folds: list[int] = []

    class UnavailableRuns:
        """The runs store, except that every fold fails as the catalog did."""

        def __getattr__(self, name: str) -> Any:
            return getattr(catalog.runs, name)

        def fold_run_events(self, events: Any, starts: Any = None) -> Any:
            folds.append(len(events))
            raise failure

        def fold_run_event(self, event: Any, starts: Any = None) -> Any:
            folds.append(1)
            raise failure

    notifier.runs = UnavailableRuns()
    poll = list(events([(5, 0), (5, 0)]))
    assert notifier.handle_all(poll) == [failure] * len(poll)
    assert folds == [len(poll)]
    assert catalog.runs.get_run(poll[0].run_id) is None
