"""Two notifier replicas sweeping at the same moment send each unsent notification once: each sweep claims the
notifications it is about to try, at once, with a lease (the ledger's next attempt time, on the catalog's clock), and
sends only those it claimed; a sweep that dies after its claim leaves the notification to a later sweep once the
lease is over.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from services.notifier import notification_claims
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.catalog.lease_claims import MAX_CLAIMS
from shared.events import RunFailed
from tests.benchmarks.bench_notifier_sweep import unsent_ledger as unsent_ledger_of
from tests.integration.test_notifier_finish_claim import meanwhile as meanwhile_held
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
    meanwhile_held(first.sweep, holding, second_done, lambda: meanwhile(second, failed))
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
    # Two sweeps must end within the lease for the test to tell a live claim from one past its lease: they took
    # 2.5 s once on a loaded 2-core machine (a CI beside three test runs), so 4 s.
    lease = 4.0
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


def interleaved(failed: int, missed: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """``failed`` and ``missed`` run ids, the missed ones evenly spaced in the ledger's order (run id), among fewer
    or more failed ones: a claim cut in parts by run id cuts the missed runs' group too."""
    ids = sorted((uuid.uuid4() for _ in range(failed + missed)), key=str)
    missed_ids = [ids[i * len(ids) // missed] for i in range(missed)]  # evenly spaced, whichever is more
    taken = set(missed_ids)
    return [run_id for run_id in ids if run_id not in taken], missed_ids


def paused_after_each_claim_statement(
    monkeypatch: pytest.MonkeyPatch, catalog: CatalogStores, thread: str, paused: threading.Event, go: threading.Event
) -> None:
    """In the thread named ``thread``, the sweep's claim of the unsent notifications stops after its first statement's
    transaction is committed (``paused`` set) until ``go``; other threads' claims are left alone."""
    runs = catalog.runs
    real_claim, real_begin = runs.claim_unsent_notifications, runs.database.begin
    claiming = threading.local()

    def claim(*args: Any, **kwargs: Any) -> Any:
        claiming.on = threading.current_thread().name == thread
        try:
            return real_claim(*args, **kwargs)
        finally:
            claiming.on = False

    @contextlib.contextmanager
    def begin(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_begin(*args, **kwargs) as connection:
            yield connection
        if getattr(claiming, "on", False) and not paused.is_set():
            paused.set()
            assert go.wait(DEADLINE), "never let go on"

    monkeypatch.setattr(runs, "claim_unsent_notifications", claim)
    monkeypatch.setattr(runs.database, "begin", begin)


def test_two_replicas_sweeping_at_once_send_one_missed_digest_per_definition_when_over_500_unsent(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    """540 unsent notifications (30 failed runs' emails and ``failed`` webhooks; 240 missed runs', the failed spread
    among them by run id): replica A's sweep stops right after its claim's first statement, and replica B's whole
    sweep runs then. Before, the claim was one statement (its own transaction) per 500: B claimed the rest and sent
    the missed runs it held as a digest of its own, so the 240 missed runs went out as two digests (223 and 17 runs),
    by mail and by webhook. Now A's claim is one statement: B finds nothing to claim, and the 240 go out as one
    digest.

    Most of the 540 are missed runs' (two digests to send, not one email or webhook each): the sweep sends 62
    notifications, not 602 as with 300 failed runs and 30 missed (25-30 s of a CI run on each catalog)."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "missed"], max_failure_percent=10))
    failed, missed = interleaved(30, 240)
    unsent_ledger_of(catalog.runs, failed, missed)
    assert len(catalog.runs.unsent_notifications(limit=1_000)) == 540
    first, second = replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")
    paused, go = threading.Event(), threading.Event()
    paused_after_each_claim_statement(monkeypatch, catalog, "replica-a-sweep", paused, go)
    meanwhile_held(first.sweep, paused, go, second.sweep, name="replica-a-sweep")

    mails, failed_hooks, hook_ids = delivered(sink, receiver)
    assert mails == {"[member export] nightly: failed": 30, "[member export] nightly: 240 scheduled runs missed": 1}
    assert failed_hooks == dict.fromkeys(map(str, failed), 1)
    assert len(hook_ids) == 30 + 1
    assert set(hook_ids.values()) == {1}
    assert catalog.runs.unsent_notifications(limit=1_000) == []


class CatalogGone(Exception):
    """The catalog's connection lost in the middle of a transaction (its statement ran, the commit never came)."""


def lost_once_claimed(monkeypatch: pytest.MonkeyPatch, database: Any, last: Callable[[Any], bool]) -> None:
    """``database``'s transactions lost (:class:`CatalogGone`, never committed) once a statement of theirs returned a
    row for which ``last`` holds (the claim of the last key ran)."""
    real_begin = database.begin

    class Losing:
        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            rows = self.connection.execute(*args, **kwargs).all()
            if any(last(row) for row in rows):
                raise CatalogGone
            return rows

    @contextlib.contextmanager
    def begin(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_begin(*args, **kwargs) as connection:
            yield Losing(connection)

    monkeypatch.setattr(database, "begin", begin)


def test_a_claim_whose_transaction_fails_claims_nothing(catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch):
    """A sweep's claim of 660 unsent notifications fails: its transaction is lost after its statement claiming the
    last of them ran. Before, the claim was one transaction per 500: the first 500 stayed claimed, not due for the
    whole lease (10 minutes), though the sweep that claimed them had stopped. Now the claim is one statement in one
    transaction: rolled back whole, every notification is due again at once."""
    failed, missed = interleaved(300, 30)
    unsent_ledger_of(catalog.runs, failed, missed)
    keys = catalog.runs.unsent_notifications(limit=1_000)
    assert len(keys) == 660
    last = max((str(run_id), kind) for run_id, kind in keys)
    lost_once_claimed(monkeypatch, catalog.database, lambda row: (str(row[0]), row[1]) == last)
    with pytest.raises(CatalogGone):
        catalog.runs.claim_unsent_notifications(keys, 600)
    monkeypatch.undo()
    assert len(catalog.runs.unsent_notifications(limit=1_000)) == 660  # due now, not after the lease
    assert len(catalog.runs.claim_unsent_notifications(keys, 600)) == 660
    with pytest.raises(ValueError, match="at most"):  # never cut in parts: too many at once are refused
        catalog.runs.claim_unsent_notifications([(uuid.uuid4(), "error") for _ in range(MAX_CLAIMS + 1)], 600)
    # As many as may be claimed at once make one statement the database takes (PostgreSQL's parser refused 8,000).
    assert catalog.runs.claim_unsent_notifications([(uuid.uuid4(), "error") for _ in range(MAX_CLAIMS)], 600) == {}


def test_a_finish_redone_while_a_sweep_holds_its_notifications_leaves_them_to_the_sweep(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A's sweep holds the unsent notifications (held in its first send) when replica B does the failed and
    missed runs' finishes again (their first handling was interrupted after claiming them in the ledger): their
    emails, final webhooks and missed runs' group. Before, the finish sent through its own ledger claim whatever a
    sweep held: every email and webhook twice, the missed runs' digest twice. Now the finish claims each as a sweep
    does first, finds A's claims, and sends nothing; A sends each once."""

    def finishes_again(second: Notifier, failed: list[uuid.UUID]) -> None:
        records = catalog.runs.list_runs("nightly")
        assert len(records) == FAILED_RUNS + MISSED_RUNS
        for record in records:
            at = record.finished_at or datetime.now(UTC)
            second._after_fold(record, record, at, finishing=True, finishes=[], attempts=1)
        second._send_missed(attempts=1)
        assert sink.received() == []
        assert receiver.receipts() == []

    while_a_sweep_is_held(catalog, sink, receiver, finishes_again)
