"""A finish's claims of its emails and webhooks in the ledger name the notifier replica that made them: a replica
killed between a notification's claim and its record (SIGKILL, out of memory), restarted under the same
``EXPORT_NOTIFIER_REPLICA_ID`` (a container restarted in place), sends it at once when the event comes again, once;
a replica of another id leaves it until the lease is over, as before. A claim stops being its replica's once anything
moves it: a failed attempt's backoff, a takeover after the lease, a sweep's claim, an older release's write.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.events import AnyRunEvent, RunMissed
from tests.integration.test_notifier import events
from tests.integration.test_notifier_finish_claim import failed_run, failed_webhooks, replica
from tests.integration.test_notifier_finish_once import Killed, with_policy
from tests.integration.test_notifier_webhooks import receiver, signing_secret, sink, verified

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]

#: Longest wait for a condition (a deadline, never a pause to synchronise on).
DEADLINE = 30.0
#: The lease of the tests where the restarted replica must send at once: far longer than the test, so that a send
#: cannot come from the lease's end.
LONG_LEASE = 600.0


def dies(*args: Any, **kwargs: Any) -> Any:
    raise Killed


def killed_at(notifier: Notifier, point: str) -> None:
    """Make ``notifier``'s process die at its first send of ``point`` (``mail``: an email; ``webhook``: a webhook),
    after the notification's claim and before its record."""
    if point == "mail":
        notifier.mailer.send = dies  # type: ignore[method-assign]
    else:
        assert notifier.webhooks is not None
        notifier.webhooks.sender.send = dies  # type: ignore[method-assign]


@contextmanager
def restarted(catalog: CatalogStores, sink: SmtpSink, name: str, lease: float) -> Iterator[Notifier]:
    """A new notifier process named ``name`` (on the catalog opened again)."""
    reopened = CatalogStores.from_url(catalog.database.engine.url.render_as_string(hide_password=False))
    try:
        yield replica(reopened, sink, name, lease)
    finally:
        reopened.close()


def missed_run() -> list[AnyRunEvent]:
    at = datetime.now(UTC)
    return [RunMissed(run_id=uuid.uuid4(), definition="nightly", scheduled_for=at, at=at, reason="scheduler down")]


def sent(sink: SmtpSink, receiver: HttpReceiver) -> tuple[list[str], list[tuple[str, str]]]:
    """What went out: emails' subjects, and webhooks' (type, ``webhook-id``) (a duplicate has the same id)."""
    hooks = [
        (verified(receipt)["type"], receipt.headers["webhook-id"])
        for receipt in receiver.receipts()
        if receipt.status == 200
    ]
    return [mail.subject for mail in sink.received()], hooks


#: Per kill point: the events (a failed run, or a missed one), the webhook event subscribed, and what the finish
#: sends (its email's subject, its webhook's type).
CASES = {
    "mail": ("failed", "[member export] nightly: failed", "member_export.run.failed"),
    "webhook": ("failed", "[member export] nightly: failed", "member_export.run.failed"),
    "missed-mail": ("missed", "[member export] nightly: missed", "member_export.run.missed"),
}


def poll_of(case: str) -> list[AnyRunEvent]:
    return missed_run() if case == "missed-mail" else list(events([(80, 0), (0, 20)]))


@pytest.mark.parametrize("case", list(CASES))
def test_a_replica_killed_between_a_notifications_claim_and_its_record_sends_it_at_once_restarted_under_its_id(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, case: str
):
    """Replica A finishing a run is killed in its send of the email (or of the webhook, the email sent), the
    notification claimed in the ledger and not recorded. Replica B (another id) handling the redelivered poll, and
    its sweep, leave it: A's lease runs. A restarted under its id handles the redelivered poll: the email or webhook
    goes out at once, once (the poll again, and a sweep, send nothing more). Before, A's own claim was no one's and
    waited for the lease (600 s here) and a sweep after it."""
    event, subject, hook_type = CASES[case]
    catalog.definitions.apply(with_policy(receiver, [event], max_failure_percent=10))
    poll = poll_of(case)
    run_id = poll[0].run_id
    first = replica(catalog, sink, "replica-a", LONG_LEASE)
    killed_at(first, "webhook" if case == "webhook" else "mail")
    with pytest.raises(Killed):
        first.handle_all(poll)
    mails, hooks = sent(sink, receiver)
    assert hooks == []
    assert mails == ([subject] if case == "webhook" else [])  # the webhook's case: the email went out before it
    assert catalog.runs.finishes_unhandled([run_id]) == {run_id}

    other = replica(catalog, sink, "replica-b", LONG_LEASE)
    other.handle_all(poll)
    other.sweep()
    assert sent(sink, receiver) == (mails, [])  # another replica: A's lease runs

    with restarted(catalog, sink, "replica-a", LONG_LEASE) as again:
        again.handle_all(poll)  # the poll redelivered to A, restarted in place
        mails, hooks = sent(sink, receiver)
        assert mails == [subject]
        assert [hook for hook, _ in hooks] == [hook_type]
        assert not catalog.runs.finishes_unhandled([run_id])
        again.handle_all(poll)
        again.sweep()
    other.handle_all(poll)
    other.sweep()
    assert sent(sink, receiver) == (mails, hooks)  # once each
    assert None not in catalog.runs.notifications(run_id).values()  # each recorded as sent


def test_a_replica_killed_between_a_notifications_claim_and_its_record_leaves_it_to_another_id_until_the_lease(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A is killed in its send of the email, claimed in the ledger. Replica B, another id, does not send it
    while A's lease runs, however often the poll comes; once the lease is over, B sends it (and the webhook), once."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    lease = 2.0
    first = replica(catalog, sink, "replica-a", lease)
    killed_at(first, "mail")
    claimed_at = time.monotonic()
    with pytest.raises(Killed):
        first.handle_all(poll)

    second = replica(catalog, sink, "replica-b", lease)
    second.handle_all(poll)
    second.sweep()
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    assert sent(sink, receiver) == ([], [])

    deadline = time.monotonic() + DEADLINE
    while not sink.received() or not failed_webhooks(receiver):
        assert time.monotonic() < deadline, "the email A died sending was never sent"
        second.handle_all(poll)  # the poll redelivered (and B's sweeps) until the lease is over
        second.sweep()
        threading.Event().wait(0.1)
    assert time.monotonic() - claimed_at >= lease
    second.handle_all(poll)
    second.sweep()
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(poll[0].run_id)]


def test_a_notifications_claim_is_its_replicas_until_anything_moves_it(catalog: CatalogStores):
    """The ledger's claims in a replica's name: taken back by that replica alone while live; no longer its own once a
    failed attempt's backoff, another replica's or a sweep's claim after the lease, a release or an older release's
    claim (which writes the next attempt time alone) moved it; a claim of no one's (a sweep's) is no one's to take
    back."""
    run = failed_run(datetime.now(UTC))
    catalog.runs.fold_run_events(run)
    run_id, runs = run[0].run_id, catalog.runs
    key = (run_id, "error")

    def claim(claimant: str | None) -> bool:
        return runs.claim_notification(run_id, "error", ["ops@example.com"], 60, claimant)

    def lapsed(seconds: float = -1) -> None:
        """The notification's next attempt time moved to now + ``seconds``, as a release of this test's knows no
        owner (the past: the claim's lease is over)."""
        with catalog.database.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE notifications SET next_attempt_at = :at WHERE run_id = :id AND kind = 'error'"),
                {"at": datetime.now(UTC) + timedelta(seconds=seconds), "id": str(run_id)},
            )

    assert claim("replica-a")
    assert not claim("replica-b")  # A's claim is live
    assert runs.claim_unsent_notifications([key], 60) == {}  # a sweep's claim: no one's, waits for the lease
    assert claim("replica-a")  # A's own, again (killed, restarted under its id)
    assert set(runs.claim_unsent_notifications([key], 60, "replica-a")) == {key}  # and so for a missed run's

    runs.mark_notification(run_id, "error", error="SMTP away", retry_at=datetime.now(UTC) + timedelta(hours=1))
    assert not claim("replica-a")  # a failed attempt's backoff: not even its own replica's any more

    lapsed()  # the backoff is over: due
    assert claim("replica-b")
    assert not claim("replica-a")  # B's now

    lapsed()  # B's lease is over: a sweep takes it over, in no one's name
    assert set(runs.claim_unsent_notifications([key], 60)) == {key}
    assert not claim("replica-b")
    assert not claim("replica-a")

    lapsed()
    assert claim("replica-a")
    lapsed(60)  # a replica of the release before takes it over (its lease over for it): the time alone moves
    assert not claim("replica-a")

    lapsed()
    claims = runs.claim_unsent_notifications([key], 60, "replica-a")
    runs.release_notification_claims(claims)  # released: due to anyone
    assert claim("replica-b")
    runs.mark_notification(run_id, "error")  # sent: no one's to claim
    assert not claim("replica-b")
    assert runs.notifications(run_id)["error"] is not None
