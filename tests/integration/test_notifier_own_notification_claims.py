"""A finish's claims of its emails and webhooks in the ledger name the notifier replica that made them: a replica
killed between a notification's claim and its record (SIGKILL, out of memory), restarted under the same
``EXPORT_NOTIFIER_REPLICA_ID`` (a container restarted in place), sends it at once when the event comes again, once;
a replica of another id leaves it until the lease is over, as before, and so do a live replica sharing the id (a
misconfiguration) and the same process after losing the catalog at the send's record: only a claim made before the
process started is taken back. A claim stops being its replica's once anything moves it: a failed attempt's backoff,
a takeover after the lease, a sweep's claim, an older release's write.

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
from sqlalchemy.exc import OperationalError

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.domain.runs import Claimant
from shared.events import AnyRunEvent, RunMissed
from tests.integration.test_notifier import events
from tests.integration.test_notifier_finish_claim import failed_run, failed_webhooks, held_in, meanwhile, replica
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


@pytest.mark.parametrize("point", ["mail", "webhook"])
def test_two_live_replicas_sharing_one_id_send_a_finishs_email_and_webhook_once(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, point: str
):
    """A misconfiguration: two live replicas share one ``EXPORT_NOTIFIER_REPLICA_ID``. A1 is in its finish's send of
    the email (or of the webhook), claimed in the ledger; A2, started before that claim, handles the same poll
    meanwhile (a rebalance): it does not take A1's live claim back. Each goes out once. Before, the shared id took
    it back and A2 sent the email (the webhook) a second time."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    with restarted(catalog, sink, "shared-id", LONG_LEASE) as twin:
        first = replica(catalog, sink, "shared-id", LONG_LEASE)
        holding, release = held_in(first, point)
        meanwhile(lambda: first.handle_all(poll), holding, release, lambda: twin.handle_all(poll))
        first.handle_all(poll)
        twin.handle_all(poll)
        first.sweep()
        twin.sweep()
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(poll[0].run_id)]
    assert None not in catalog.runs.notifications(poll[0].run_id).values()


def test_an_email_sent_whose_record_is_lost_is_not_sent_again_by_its_process_before_the_lease(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """The catalog is lost right after the SMTP server accepted the failure email (its record fails): the poll is
    handed back to the same process, which does not send it again at once (its own claim, made since it started, is
    not a restart's to take back): the copy goes out once the lease is over (at least once, as before claims named
    their replica). Before, the process took its claim back and sent the copy at once."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    lease = 2.0
    notifier = replica(catalog, sink, "replica-a", lease)
    record = catalog.runs.mark_notifications
    lost = threading.Event()

    def mark(keys: Any, **options: Any) -> Any:
        sent = not options.get("error") and not options.get("give_up") and not options.get("retry_at")
        if any(kind == "error" for _, kind in keys) and sent and not lost.is_set():  # the sent email's record, once
            lost.set()
            raise OperationalError("UPDATE notifications", {}, Exception("server closed the connection unexpectedly"))
        return record(keys, **options)

    catalog.runs.mark_notifications = mark  # type: ignore[method-assign]
    claimed_at = time.monotonic()
    notifier.handle_all(poll)
    assert lost.is_set()
    notifier.handle_all(poll)  # the poll handed back
    notifier.sweep()
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    subject = "[member export] nightly: failed"
    assert [mail.subject for mail in sink.received()] == [subject]

    deadline = time.monotonic() + DEADLINE
    while len(sink.received()) < 2:
        assert time.monotonic() < deadline, "the copy was never sent after the lease"
        notifier.handle_all(poll)
        notifier.sweep()
        threading.Event().wait(0.1)
    assert time.monotonic() - claimed_at >= lease
    notifier.handle_all(poll)
    notifier.sweep()
    assert [mail.subject for mail in sink.received()] == [subject, subject]  # the copy, once, after the lease
    assert catalog.runs.notifications(poll[0].run_id)["error"] is not None


def started_after_now(catalog: CatalogStores, name: str) -> Claimant:
    """A process named ``name`` started now, strictly after anything the catalog wrote so far (SQLite's clock counts
    milliseconds: wait, with a deadline, for it to move on)."""
    first = catalog.runs.catalog_clock()
    deadline = time.monotonic() + DEADLINE
    while (started := catalog.runs.catalog_clock()) <= first:
        assert time.monotonic() < deadline, "the catalog's clock never moved"
    return Claimant(name, started)


def test_a_notifications_claim_is_its_replicas_until_anything_moves_it(catalog: CatalogStores):
    """The ledger's claims in a replica's name: taken back by that replica alone, restarted (a process started after
    the claim, or its last renewal); never by a live process of the same id (started before the claim, or the one
    that made it); no longer its own once a failed attempt's backoff, another replica's or a sweep's claim after the
    lease, a release or an older release's claim (which writes the next attempt time alone) moved it; a claim of no
    one's (a sweep's) is no one's to take back."""
    run = failed_run(datetime.now(UTC))
    catalog.runs.fold_run_events(run)
    run_id, runs = run[0].run_id, catalog.runs
    key = (run_id, "error")
    live_a = started_after_now(catalog, "replica-a")  # a process of A's id running all along (a twin, or A itself)
    live_b = started_after_now(catalog, "replica-b")

    def claim(claimant: Claimant | None) -> bool:
        return runs.claim_notification(run_id, "error", ["ops@example.com"], 60, claimant)

    def restarted(name: str) -> Claimant:
        """The replica ``name``, (re)started now: after every claim so far (the take-back's best case)."""
        return started_after_now(catalog, name)

    assert claim(live_a)
    assert not claim(live_a)  # made since this process started: a live twin's, or its own (lost at the record)
    assert not claim(live_b)  # A's claim is live
    assert runs.claim_unsent_notifications([key], 60) == {}  # a sweep's claim: no one's, waits for the lease
    restarted_a = started_after_now(catalog, "replica-a")
    assert not claim(started_after_now(catalog, "replica-b"))  # another id, restarted or not
    assert claim(restarted_a)  # A's own, again (killed, restarted under its id)
    assert not claim(restarted_a)  # and now that claim is the restarted process's own: not again
    # and so for a missed run's (a sweep-like claim in A's name), by A restarted once more
    assert set(runs.claim_unsent_notifications([key], 60, started_after_now(catalog, "replica-a"))) == {key}

    def lapsed(seconds: float = -1) -> None:
        """The notification's next attempt time moved to now + ``seconds``, as a release of this test's knows no
        owner (the past: the claim's lease is over)."""
        with catalog.database.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE notifications SET next_attempt_at = :at WHERE run_id = :id AND kind = 'error'"),
                {"at": datetime.now(UTC) + timedelta(seconds=seconds), "id": str(run_id)},
            )

    runs.mark_notification(run_id, "error", error="SMTP away", retry_at=datetime.now(UTC) + timedelta(hours=1))
    assert not claim(restarted("replica-a"))  # a failed attempt's backoff: not even its own replica's any more

    lapsed()  # the backoff is over: due
    assert claim(restarted("replica-b"))
    assert not claim(restarted("replica-a"))  # B's now

    lapsed()  # B's lease is over: a sweep takes it over, in no one's name
    assert set(runs.claim_unsent_notifications([key], 60)) == {key}
    assert not claim(restarted("replica-b"))
    assert not claim(restarted("replica-a"))

    lapsed()
    assert claim(restarted("replica-a"))
    lapsed(60)  # a replica of the release before takes it over (its lease over for it): the time alone moves
    assert not claim(restarted("replica-a"))

    lapsed()
    claims = runs.claim_unsent_notifications([key], 60, restarted("replica-a"))
    twin = restarted("replica-a")  # a process of A's id started after A's claim...
    assert runs.renew_notification_claims(claims, 60).keys() == {key}  # ...which A renews since: live, not twin's
    assert not claim(twin)
    assert claim(restarted("replica-a"))  # A restarted after its last renewal: its own again

    lapsed()
    claims = runs.claim_unsent_notifications([key], 60, restarted("replica-a"))
    runs.release_notification_claims(claims)  # released: due to anyone
    assert claim(restarted("replica-b"))
    runs.mark_notification(run_id, "error")  # sent: no one's to claim
    assert not claim(restarted("replica-b"))
    assert runs.notifications(run_id)["error"] is not None
