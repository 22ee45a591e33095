"""A run's finish (failure threshold, auto-pause, final webhook, metrics, mails) is handled once, even when the
notifier fails after the fold that finished the run was committed: the event handed back, redelivered or replayed
finds the finish not handled yet and handles it; an event of a run whose finish is handled does nothing again.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition, FailurePolicy
from shared.domain.email_retries import EarlierSends
from shared.domain.runs import Claimant
from shared.domain.schedule import Schedule
from shared.errors import CatalogTimedOut
from shared.events import AnyRunEvent, RunCancelled, RunFailed, RunStarted, Trigger
from shared.outages import DependencyUnavailable
from tests.integration.test_notifier import events
from tests.integration.test_notifier_webhooks import (
    definition,
    handled_after_a_restart,
    notifier_on,
    receiver,
    signing_secret,
    sink,
    verified,
)

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]

THRESHOLD_TEXT = "20 of 100 members failed (20.0%), over the 10% threshold"


def with_policy(receiver: HttpReceiver, events: list[str], **policy: Any) -> ExportDefinition:
    """The webhooks' test definition, its channel subscribed to ``events``, with a failure policy and a schedule."""
    return definition(receiver, events=events).model_copy(
        update={
            "failure_policy": FailurePolicy(**policy),
            "schedule": Schedule.model_validate({"enabled": True, "timezone": "UTC", "cron": "0 2 * * *"}),
        }
    )


def finished(status: str) -> float:
    sample = {"definition": "nightly", "status": status}
    return REGISTRY.get_sample_value("member_export_runs_finished_total", sample) or 0.0


class Killed(BaseException):
    """The notifier's process ending where it is (nothing catches it, as nothing runs after a SIGKILL)."""


def dying(runs: Any, method: str, *, after_it: bool) -> Any:
    """The runs store, except that the process dies at ``method``: once it is done (committed) or instead of it."""

    class Dying:
        def __getattr__(self, name: str) -> Any:
            if name != method:
                return getattr(runs, name)

            def dies(*args: Any) -> Any:
                if after_it:
                    getattr(runs, name)(*args)
                raise Killed

            return dies

    return Dying()


@pytest.mark.parametrize(
    "failure",
    [DependencyUnavailable("the catalog did not answer"), CatalogTimedOut("ExportDefinition", "nightly", "55P03")],
    ids=["outage-handed-back", "timed-out-replayed"],
)
def test_a_run_over_the_threshold_is_failed_when_its_event_comes_again_after_the_definition_read_failed(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, failure: Exception
):
    """The review's case: the poll that finishes the run is folded (committed), then reading the definition fails;
    the same poll again (handed back after an outage, replayed after a timeout) applies the threshold."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "completed_with_errors"], max_failure_percent=10))
    notifier = notifier_on(catalog, sink)
    started, extracted, *outcomes = list(events([(80, 0), (0, 20)]))
    notifier.handle_all([started, extracted])
    real_find = catalog.definitions.find
    failing = {"on": True}

    def find(kind: Any, name: str) -> Any:
        if failing["on"]:
            raise failure
        return real_find(kind, name)

    catalog.definitions.find = find  # type: ignore[method-assign]
    failed_before = finished("failed")

    assert notifier.handle_all(outcomes) == [failure] * len(outcomes)
    record = catalog.runs.get_run(started.run_id)
    assert record is not None
    assert record.status.value == "completed_with_errors"  # folded; its finish is not handled
    assert catalog.runs.finishes_unhandled([started.run_id]) == {started.run_id}
    failing["on"] = False
    assert notifier.handle_all(outcomes) == [[]] * len(outcomes)
    notifier.handle_all(outcomes)  # and once more: nothing more

    record = catalog.runs.get_run(started.run_id)
    assert record is not None
    assert (record.status.value, record.delivered, record.failed) == ("failed", 80, 20)
    [mail] = sink.received()
    assert mail.subject == "[member export] nightly: failed"
    assert THRESHOLD_TEXT in mail.text()
    assert [verified(r)["type"] for r in receiver.receipts()] == ["member_export.run.failed"]
    assert finished("failed") == failed_before + 1
    assert not catalog.runs.finishes_unhandled([started.run_id])


def test_a_notifier_killed_between_the_fold_and_the_finish_finishes_the_run_once_after_a_restart(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    first = notifier_on(catalog, sink)
    first.runs = dying(catalog.runs, "fold_run_events", after_it=True)  # the poll's fold committed, then killed
    with pytest.raises(Killed):
        first.handle_all(poll)
    record = catalog.runs.get_run(poll[0].run_id)
    assert record is not None
    assert record.status.value == "completed_with_errors"
    failed_before, with_errors_before = finished("failed"), finished("completed_with_errors")

    handled_after_a_restart(catalog, sink, poll)  # the poll was not committed: redelivered to the restarted one
    handled_after_a_restart(catalog, sink, poll)
    notifier = notifier_on(catalog, sink)
    for event in poll:
        notifier.handle(event)

    record = catalog.runs.get_run(poll[0].run_id)
    assert record is not None
    assert record.status.value == "failed"
    [mail] = sink.received()
    assert mail.subject == "[member export] nightly: failed"
    assert THRESHOLD_TEXT in mail.text()
    [webhook] = [verified(r) for r in receiver.receipts() if r.status == 200]
    assert (webhook["type"], webhook["data"]["status"]) == ("member_export.run.failed", "failed")
    assert (finished("failed"), finished("completed_with_errors")) == (failed_before + 1, with_errors_before)


@contextmanager
def paused_webhook_claim_timing_out(catalog: CatalogStores) -> Iterator[CatalogTimedOut]:
    """Within: the claim of channel ``ops``'s ``paused`` webhook times out (the failure, yielded), the others are
    claimed as ever."""
    real_claim = catalog.runs.claim_notification
    timed_out = CatalogTimedOut("Run", None, "57014")

    def claim(
        run_id: uuid.UUID,
        kind: str,
        recipients: list[str],
        lease_seconds: float | None = None,
        claimant: Claimant | None = None,
        earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = None,
    ) -> bool:
        if kind == "webhook:ops:paused":
            raise timed_out
        return real_claim(run_id, kind, recipients, lease_seconds, claimant, earlier)

    catalog.runs.claim_notification = claim  # type: ignore[method-assign]
    try:
        yield timed_out
    finally:
        catalog.runs.claim_notification = real_claim  # type: ignore[method-assign]


def test_a_pause_whose_webhook_could_not_be_claimed_sends_it_when_the_event_comes_again(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Interrupted in the middle of the finish: the schedule paused, then the ``paused`` webhook's claim timed out.
    Replayed, the event finds the schedule paused already (no second pause) and still sends the webhook."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "paused"], pause_after_failed_runs=2))
    notifier = notifier_on(catalog, sink)
    runs: list[list[AnyRunEvent]] = []
    for _ in range(2):
        run_id = uuid.uuid4()
        runs.append(
            [
                RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE),
                RunFailed(run_id=run_id, definition="nightly", reason="query 'q' failed: boom"),
            ]
        )
    notifier.handle_all(runs[0])
    with paused_webhook_claim_timing_out(catalog) as timed_out:
        assert notifier.handle_all(runs[1]) == [timed_out, timed_out]
    assert catalog.definitions.get(ExportDefinition, "nightly").schedule.enabled is False
    notifier.handle_all(runs[1])  # replayed from the dead-letter topic
    notifier.handle_all(runs[1])

    types = [(verified(r)["type"], verified(r)["data"]["run_id"]) for r in receiver.receipts()]
    second = str(runs[1][0].run_id)
    assert sorted(types) == sorted(
        [
            ("member_export.run.failed", str(runs[0][0].run_id)),
            ("member_export.run.paused", second),
            ("member_export.run.failed", second),
        ]
    )
    _, second_mail = sink.received()
    assert "Schedule: paused after 2 consecutive failed runs" in second_mail.text()


def test_an_event_of_a_run_whose_finish_was_handled_does_nothing_again(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Redelivered one by one, as a poll, and to a restarted notifier: no second webhook, count or mail."""
    catalog.definitions.apply(with_policy(receiver, ["succeeded"], max_failure_percent=10))
    run = list(events([(10, 0), (10, 0)]))
    notifier = notifier_on(catalog, sink)
    succeeded = finished("succeeded")
    notifier.handle_all(run)
    assert not catalog.runs.finishes_unhandled([run[0].run_id])
    assert finished("succeeded") == succeeded + 1

    for event in run:
        notifier.handle(event)
    notifier.handle_all(run + run)
    handled_after_a_restart(catalog, sink, run)

    assert [verified(r)["type"] for r in receiver.receipts()] == ["member_export.run.succeeded"]
    assert [mail.subject for mail in sink.received()] == []  # the definition mails errors only
    assert finished("succeeded") == succeeded + 1


def test_a_finish_done_but_not_recorded_is_done_again_without_a_second_webhook_mail_or_count(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Killed after the finish's work, before it was recorded: the restarted notifier runs every step again, and
    each is sent or counted once (the ledger's claims, the threshold's reason kept, the count on recording)."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    first = notifier_on(catalog, sink)
    first.runs = dying(catalog.runs, "mark_finishes_handled", after_it=False)  # killed as it would record it
    failed_before = finished("failed")
    with pytest.raises(Killed):
        first.handle_all(poll)
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]  # the work was done
    assert catalog.runs.finishes_unhandled([poll[0].run_id]) == {poll[0].run_id}

    restarted = notifier_on(catalog, sink)
    restarted.handle_all(poll)
    restarted.handle_all(poll)

    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert [verified(r)["type"] for r in receiver.receipts()] == ["member_export.run.failed"]
    assert finished("failed") == failed_before + 1
    assert not catalog.runs.finishes_unhandled([poll[0].run_id])


def test_a_run_cancelled_from_the_api_is_counted_once_when_the_notifier_handles_its_event(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """The admin API folds the cancellation itself (the run is final at once), then publishes it: the notifier
    finds the run final and its finish not handled, and counts it (before, it found it already final: never)."""
    catalog.definitions.apply(definition(receiver, events=["failed"]))
    run_id = uuid.uuid4()
    notifier = notifier_on(catalog, sink)
    notifier.handle(RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.MANUAL))
    cancelled = RunCancelled(run_id=run_id, definition="nightly", requested_by="alice")
    catalog.runs.fold_run_event(cancelled)  # as shared.application.runs.cancel_run does
    before = finished("cancelled")

    notifier.handle_all([cancelled])
    notifier.handle(cancelled)

    assert finished("cancelled") == before + 1
    assert sink.received() == []
    assert receiver.receipts() == []  # a cancelled run has no webhook event
