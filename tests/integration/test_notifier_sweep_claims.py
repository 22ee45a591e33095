"""Two notifier replicas sweeping at the same moment send each unsent notification once: each sweep claims the
notifications it is about to try, at once, with a lease (the ledger's next attempt time, on the catalog's clock), and
sends only those it claimed; a sweep that dies after its claim leaves the notification to a later sweep once the
lease is over.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from services.notifier import notification_claims
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.events import RunFailed
from tests.benchmarks.bench_notifier_sweep import unsent_ledger as unsent_ledger_of
from tests.integration.test_notifier_finish_claim import replica
from tests.integration.test_notifier_finish_once import Killed, with_policy
from tests.integration.test_notifier_webhooks import receiver, signing_secret, sink, verified

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]

#: Longest wait for a thread or a condition (a deadline, never a pause to synchronise on).
DEADLINE = 30.0
FAILED_RUNS = 3
MISSED_RUNS = 4  # above the digest threshold (3): one digest per channel


def unsent_ledger(catalog: CatalogStores, receiver: HttpReceiver) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Failed and missed runs whose finish is done and whose notifications are claimed and unsent (their first
    attempt failed, or a crash came between claim and send): the sweep's to send. Failed runs: an error email and a
    ``failed`` webhook each; missed runs: an error email and a ``missed`` webhook each (sent as two digests)."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "missed"], max_failure_percent=10))
    failed = [uuid.uuid4() for _ in range(FAILED_RUNS)]
    missed = [uuid.uuid4() for _ in range(MISSED_RUNS)]
    unsent_ledger_of(catalog.runs, failed, missed)
    assert len(catalog.runs.unsent_notifications()) == 2 * (FAILED_RUNS + MISSED_RUNS)
    assert not catalog.runs.finishes_unhandled(failed + missed)
    return failed, missed


def delivered(sink: SmtpSink, receiver: HttpReceiver) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """What went out: emails by subject, ``failed`` webhooks by run id, webhooks by ``webhook-id`` (a duplicate
    delivery has the same id)."""
    accepted = [receipt for receipt in receiver.receipts() if receipt.status == 200]
    payloads = [verified(receipt) for receipt in accepted]
    return (
        Counter(mail.subject for mail in sink.received()),
        Counter(p["data"]["run_id"] for p in payloads if p["type"] == "member_export.run.failed"),
        Counter(receipt.headers["webhook-id"] for receipt in accepted),
    )


def assert_each_sent_once(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, failed: list[uuid.UUID], missed: list[uuid.UUID]
) -> None:
    mails, failed_hooks, hook_ids = delivered(sink, receiver)
    assert mails == {
        "[member export] nightly: failed": FAILED_RUNS,
        f"[member export] nightly: {MISSED_RUNS} scheduled runs missed": 1,
    }
    assert failed_hooks == dict.fromkeys(map(str, failed), 1)
    assert len(hook_ids) == FAILED_RUNS + 1  # + the missed runs' digest
    assert set(hook_ids.values()) == {1}
    for run_id in failed + missed:
        assert all(sent is not None for sent in catalog.runs.notifications(run_id).values())


def waiting(real: Callable[..., Any], condition: Callable[[], bool], reached: threading.Event) -> Callable[..., Any]:
    """``real`` (a send) setting ``reached``, then waiting until ``condition`` holds before it sends."""

    def send(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < deadline, "the other sweep never got there"
            threading.Event().wait(0.01)
        return real(*args, **kwargs)

    return send


def each_send_waits_for(notifier: Notifier, condition: Callable[[], bool], reached: threading.Event) -> None:
    """Make ``notifier``'s sends (mail and webhook) set ``reached``, then wait until ``condition`` holds."""
    notifier.mailer.send = waiting(notifier.mailer.send, condition, reached)  # type: ignore[method-assign]
    assert notifier.webhooks is not None
    sender = notifier.webhooks.sender
    sender.send = waiting(sender.send, condition, reached)  # type: ignore[method-assign]


def sweep_both_at_once(
    sweeps: Sequence[Callable[[], object]], hold: Callable[[int, Callable[[], bool], threading.Event], None]
) -> None:
    """Run the two replicas' ``sweeps`` at the same moment (released together by a barrier), each holding its first
    send until the other has reached a send of its own or finished its sweep (``hold(me, condition, reached)``
    makes replica ``me``'s sends set ``reached`` and wait for ``condition``); both must end, without error."""
    reached = [threading.Event(), threading.Event()]
    done = [threading.Event(), threading.Event()]

    def there(other: int) -> Callable[[], bool]:
        return lambda: reached[other].is_set() or done[other].is_set()

    for me, other in ((0, 1), (1, 0)):
        hold(me, there(other), reached[me])
    barrier = threading.Barrier(2, timeout=DEADLINE)
    errors: list[BaseException] = []

    def sweeping(me: int) -> None:
        try:
            barrier.wait()
            sweeps[me]()
        except BaseException as exc:  # noqa: BLE001 - told by the test below
            errors.append(exc)
        finally:
            done[me].set()

    threads = [threading.Thread(target=sweeping, args=(me,)) for me in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def while_a_sweep_is_held(
    catalog: CatalogStores,
    sink: SmtpSink,
    receiver: HttpReceiver,
    meanwhile: Callable[[Notifier, list[uuid.UUID]], object],
) -> None:
    """Replica A's sweep of the unsent ledger held in its first send until ``meanwhile`` (given replica B and the
    failed runs) is over; then each notification must have gone out once."""
    failed, missed = unsent_ledger(catalog, receiver)
    first, second = replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")
    second_done, holding = threading.Event(), threading.Event()
    each_send_waits_for(first, second_done.is_set, holding)
    thread = threading.Thread(target=first.sweep)
    thread.start()
    try:
        assert holding.wait(DEADLINE), "replica A never reached its first send"
        meanwhile(second, failed)
    finally:
        second_done.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert_each_sent_once(catalog, sink, receiver, failed, missed)


def test_two_replicas_sweeping_at_once_send_each_unsent_email_webhook_and_digest_once(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replicas A and B sweep at the same moment (released together by a barrier), each holding its first send
    until the other has reached a send of its own or finished its sweep. Before, both read the same unsent
    notifications and both sent every one: each failure email, ``failed`` webhook and missed-run digest twice. Now
    one sweep claims them and sends each once; the other finds none to claim."""
    failed, missed = unsent_ledger(catalog, receiver)
    replicas = [replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")]
    sweep_both_at_once(
        [notifier.sweep for notifier in replicas],
        lambda me, condition, reached: each_send_waits_for(replicas[me], condition, reached),
    )

    assert_each_sent_once(catalog, sink, receiver, failed, missed)
    for notifier in replicas:  # and again: nothing left to send
        notifier.sweep()
    assert_each_sent_once(catalog, sink, receiver, failed, missed)


def test_a_replica_whose_sweep_is_held_in_a_send_keeps_the_rest_of_its_claims_from_the_other_replicas_sweep(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A's sweep is held in its first send (a slow SMTP server or receiver) until replica B's whole sweep is
    over. Before, B sent everything meanwhile and A, released, sent it all again. Now B finds A's claims and sends
    nothing; A sends each once."""
    while_a_sweep_is_held(catalog, sink, receiver, lambda second, failed: second.sweep())


def test_a_sweep_killed_after_its_claim_leaves_the_notification_to_a_later_sweep_once_the_lease_is_over(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A's sweep claims the unsent notifications and dies at its first send. Replica B's sweep right after
    sends the ones A did not get to (released as A's sweep ended), and not the one A was sending (its claim live:
    A may have sent it); once the lease is over, a sweep of B sends it, once. Before, B sent it at once."""
    failed, missed = unsent_ledger(catalog, receiver)
    lease = 2.0
    first, second = replica(catalog, sink, "replica-a", lease), replica(catalog, sink, "replica-b", lease)

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    first.mailer.send = dies  # type: ignore[method-assign]
    assert first.webhooks is not None
    first.webhooks.sender.send = dies  # type: ignore[method-assign]

    def sent() -> int:
        """Emails and webhooks delivered (each counted once per delivery)."""
        mails, _, hooks = delivered(sink, receiver)
        return sum(mails.values()) + sum(hooks.values())

    claimed_at = time.monotonic()
    with pytest.raises(Killed):
        first.sweep()

    second.sweep()
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    # All but the one A died sending (its first claim: the first failed run's email).
    assert sent() == (FAILED_RUNS + 1) * 2 - 1

    deadline = time.monotonic() + DEADLINE
    while sent() < (FAILED_RUNS + 1) * 2:
        assert time.monotonic() < deadline, "the notification A died sending was never sent"
        second.sweep()
        threading.Event().wait(0.1)
    assert time.monotonic() - claimed_at >= lease
    second.sweep()
    assert_each_sent_once(catalog, sink, receiver, failed, missed)


def test_a_sweeps_claim_is_exclusive_renewed_by_its_holder_taken_over_after_the_lease_and_ended_by_a_mark(
    catalog: CatalogStores, receiver: HttpReceiver
):
    failed, _ = unsent_ledger(catalog, receiver)
    runs = catalog.runs
    email, hook = (failed[0], "error"), (failed[0], "webhook:ops:failed")

    claims = runs.claim_unsent_notifications([email, hook], 60)
    assert set(claims) == {email, hook}
    assert runs.claim_unsent_notifications([email, hook], 60) == {}  # held: another sweep's
    assert email not in runs.unsent_notifications()  # not due while held
    renewed = runs.renew_notification_claims(claims, 60)
    assert set(renewed) == {email, hook}
    assert runs.renew_notification_claims(claims, 60) == {}  # the old claim is no longer anyone's

    with catalog.database.engine.begin() as connection:  # the holder died: its claim of the email is past the lease
        connection.execute(
            sa.text("UPDATE notifications SET next_attempt_at = :at WHERE run_id = :id AND kind = 'error'"),
            {"at": datetime.now(UTC) - timedelta(seconds=1), "id": str(failed[0])},
        )
    taken = runs.claim_unsent_notifications([email, hook], 60)
    assert set(taken) == {email}  # taken over; the webhook's claim is still live
    renewed = runs.renew_notification_claims(renewed, 60)
    assert set(renewed) == {hook}  # the dead holder's email is not its own now

    runs.release_notification_claims({hook: claims[hook]})  # a stale claim releases nothing
    assert hook not in runs.unsent_notifications()
    runs.release_notification_claims(renewed)  # not tried: due again at once, for the next sweep
    assert hook in runs.unsent_notifications()
    runs.mark_notification(*email)  # sent: claimed by no one again
    assert runs.claim_unsent_notifications([email, hook], 60).keys() == {hook}
    assert runs.claim_unsent_notifications([(uuid.uuid4(), "error")], 60) == {}  # unknown


def test_a_sweep_held_past_its_lease_renews_its_claims_and_leaves_those_taken_over_meanwhile(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    """Replica A's sweep spends longer than its lease in its first send (made so: the other claims' lease made past,
    A's clock moved on); replica B's sweep took the other notifications over meanwhile and sent them. Before, A went
    on to send them all again. Now A renews its claims before its next send, finds them B's, and sends nothing more."""

    def past_the_lease(second: Notifier, failed: list[uuid.UUID]) -> None:
        in_flight = min(map(str, failed))  # A's first send: the first failed run's email (the ledger's order)
        with catalog.database.engine.begin() as connection:  # A's other claims: past their lease
            connection.execute(
                sa.text(
                    "UPDATE notifications SET next_attempt_at = :at "
                    "WHERE sent_at IS NULL AND NOT (run_id = :id AND kind = 'error')"
                ),
                {"at": datetime.now(UTC) - timedelta(seconds=1), "id": in_flight},
            )
        second.sweep()
        real = time.monotonic
        later = type("Later", (), {"monotonic": staticmethod(lambda: real() + second.finish_lease_seconds)})
        monkeypatch.setattr(notification_claims, "time", later)  # A's clock when it is released

    while_a_sweep_is_held(catalog, sink, receiver, past_the_lease)


def test_an_event_of_a_finished_run_come_again_leaves_its_unsent_email_to_the_sweep_sending_it(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A's sweep is in the middle of a failed run's unsent email when replica B gets the run's ``run.failed``
    again (a redelivery; the run's finish done long ago), which retries the run's unsent emails. Before, B sent it
    too: twice. Now B claims it as a sweep would, finds it A's, and leaves it; A sends it once."""

    def event_again(second: Notifier, failed: list[uuid.UUID]) -> None:
        in_flight = uuid.UUID(min(map(str, failed)))  # A's first send: the first failed run's email
        again = RunFailed(run_id=in_flight, definition="nightly", reason="query 'q' failed")
        assert second.handle_all([again]) == [[]]

    while_a_sweep_is_held(catalog, sink, receiver, event_again)
