"""A run's finish (failure policy, final webhook, mails, counts) is done by exactly one notifier replica: the one
that claims it. Two replicas handling the same finishing poll at once (a rebalance: the old owner still in its
round, the new one reading the same uncommitted poll) send the final webhook and the mail once; a replica that died
holding the claim has its finish done by another once the lease is over; a run final and unhandled that no event
comes for again is finished by the sweep, which counts it in ``member_export_notifier_finishes_pending`` first.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from devtools.http_receiver import HttpReceiver
from devtools.processes import free_port
from devtools.smtp_sink import SmtpSink
from services.notifier import notifying
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores, runs_store
from shared.events import AnyRunEvent, RunFailed, RunMissed, RunStarted, Trigger
from tests.integration.test_notifier import events
from tests.integration.test_notifier_finish_once import Killed, finished, with_policy
from tests.integration.test_notifier_webhooks import notifier_on, receiver, signing_secret, sink, verified

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]

#: Longest wait for a thread or a condition (a deadline, never a pause to synchronise on).
DEADLINE = 30.0
#: How long replica A's thread may take to end once released (a bound, like DEADLINE).
JOIN_DEADLINE = 120.0


def replica(catalog: CatalogStores, sink: SmtpSink, name: str, lease: float = 60.0) -> Notifier:
    """A notifier replica named ``name`` (set as attributes: the test runs, and fails, on the code before claims)."""
    notifier = notifier_on(catalog, sink)
    notifier.replica_id, notifier.finish_lease_seconds = name, lease
    return notifier


def meanwhile(
    target: Callable[[], object],
    reached: threading.Event,
    release: threading.Event,
    then: Callable[[], object],
    name: str | None = None,
) -> None:
    """Run ``target`` (replica A's work) in a thread (named ``name``) until it sets ``reached``; run ``then`` here
    meanwhile, then set ``release`` and wait for the thread's end."""
    thread = threading.Thread(target=target, name=name)
    thread.start()
    try:
        assert reached.wait(DEADLINE), "replica A never got there"
        then()
    finally:
        release.set()
        # A bound, not a wait: a sweep of hundreds of real SMTP and HTTP sends takes 16-21 s on a quiet machine and
        # ran past 30 s at load 5; a thread still alive after this fails the test.
        thread.join(JOIN_DEADLINE)
    assert not thread.is_alive()


def dying_after_the_fold(catalog: CatalogStores, run_id: uuid.UUID) -> Any:
    """The definitions store, except that the process dies at its first read of a definition once ``run_id`` is
    folded (a read before the fold, for the ``started`` webhooks it claims, goes on): before any of its finish."""

    class Dying:
        def __getattr__(self, name: str) -> Any:
            return getattr(catalog.definitions, name)

        def find(self, *args: Any) -> Any:
            if catalog.runs.get_run(run_id) is not None:
                raise Killed
            return catalog.definitions.find(*args)

    return Dying()


def failed_webhooks(receiver: HttpReceiver) -> list[str]:
    """The run ids of the ``failed`` webhooks the receiver accepted (a duplicate has the same ``webhook-id``)."""
    payloads = [verified(r) for r in receiver.receipts() if r.status == 200]
    return [p["data"]["run_id"] for p in payloads if p["type"] == "member_export.run.failed"]


def held_in(notifier: Notifier, point: str) -> tuple[threading.Event, threading.Event]:
    """Make ``notifier`` stop in its finish at ``point`` (its mail's SMTP send, or its webhook's send, each claimed
    in the ledger and not sent): set ``holding`` there, and wait for ``release``."""
    holding, release = threading.Event(), threading.Event()

    def hold(real: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            holding.set()
            assert release.wait(DEADLINE), "never released"
            return real(*args, **kwargs)

        return held

    if point == "mail":
        notifier.mailer.send = hold(notifier.mailer.send)  # type: ignore[method-assign]
    else:
        assert notifier.webhooks is not None
        notifier.webhooks.send_claimed = hold(notifier.webhooks.send_claimed)  # type: ignore[method-assign]
    return holding, release


@pytest.mark.parametrize("point", ["mail", "webhook"])
def test_two_replicas_handling_the_same_finishing_poll_at_once_send_the_webhook_and_the_mail_once(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, point: str
):
    """The review's case made deterministic: replica A is in the middle of the finish (its mail or its webhook
    claimed, not sent yet) when replica B handles the same poll. Before, B found the finish unhandled and did it
    too: the mail, or the webhook (same ``webhook-id``), went out twice. Now B finds it claimed by A and leaves it."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    first, second = replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")
    holding, release = held_in(first, point)
    failed_before = finished("failed")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(first.handle_all(poll)))
    thread.start()
    try:
        assert holding.wait(DEADLINE), "replica A never reached its send"
        assert second.handle_all(poll) == [[]] * len(poll)  # the new owner's round, while A is in its finish
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert results == [[[]] * len(poll)]

    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(poll[0].run_id)]
    assert finished("failed") == failed_before + 1
    assert not catalog.runs.finishes_unhandled([poll[0].run_id])
    second.handle_all(poll)  # and the poll again, once A is done: nothing more
    assert len(sink.received()) == 1
    assert len(failed_webhooks(receiver)) == 1


def test_a_replica_that_died_holding_a_finish_has_it_done_by_another_once_the_lease_is_over(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A claims the run's finish and dies before any of it (at its first read of the definition). Replica
    B, handling the same poll at once, leaves it (A's lease runs); again after the lease, it does the finish once."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    first = replica(catalog, sink, "replica-a")
    first.definitions = dying_after_the_fold(catalog, poll[0].run_id)
    lease = 2.0
    second = replica(catalog, sink, "replica-b", lease=lease)
    failed_before = finished("failed")
    claimed_at = time.monotonic()
    with pytest.raises(Killed):
        first.handle_all(poll)

    second.handle_all(poll)  # within A's lease: B must not do A's finish
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    assert sink.received() == []
    assert failed_webhooks(receiver) == []
    assert catalog.runs.finishes_unhandled([poll[0].run_id]) == {poll[0].run_id}

    deadline = time.monotonic() + DEADLINE
    while catalog.runs.finishes_unhandled([poll[0].run_id]) and time.monotonic() < deadline:
        second.handle_all(poll)  # the poll redelivered until the lease is over
        threading.Event().wait(0.1)
    assert not catalog.runs.finishes_unhandled([poll[0].run_id])
    assert time.monotonic() - claimed_at >= lease
    second.handle_all(poll)
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(poll[0].run_id)]
    assert finished("failed") == failed_before + 1


def pending() -> float | None:
    return REGISTRY.get_sample_value("member_export_notifier_finishes_pending")


def failed_run(at: datetime) -> list[AnyRunEvent]:
    run_id = uuid.uuid4()
    return [
        RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE, at=at),
        RunFailed(run_id=run_id, definition="nightly", reason="query 'q' failed: boom", at=at),
    ]


def test_the_sweep_finishes_a_run_final_and_unhandled_past_the_lease_and_counts_it_first(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """A run final whose finish no one did, no event of it coming again (folded, then the notifier died and the poll
    was dead-lettered, never replayed): the sweep finishes it (mail, webhook, count) and shows it in the gauge; a
    run finished within the lease is left to its events; a second sweep finds none."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    old, recent = failed_run(datetime.now(UTC) - timedelta(minutes=10)), failed_run(datetime.now(UTC))
    for run in (old, recent):
        catalog.runs.fold_run_events(run)
    notifier = replica(catalog, sink, "replica-b")
    failed_before = finished("failed")

    notifier.sweep()

    assert pending() == 1
    assert failed_webhooks(receiver) == [str(old[0].run_id)]
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert finished("failed") == failed_before + 1
    assert catalog.runs.finishes_unhandled([old[0].run_id, recent[0].run_id]) == {recent[0].run_id}

    notifier.sweep()
    assert pending() == 0
    assert len(sink.received()) == 1
    assert finished("failed") == failed_before + 1


def test_the_sweep_finishes_a_run_whose_claimant_died_once_the_lease_is_over(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A claims a run's finish and dies before any of it; no event of the run comes again. Replica B's sweep
    leaves it while A's lease runs, and finishes it once the lease is over."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    run = failed_run(datetime.now(UTC) - timedelta(minutes=10))
    first = replica(catalog, sink, "replica-a")
    first.definitions = dying_after_the_fold(catalog, run[0].run_id)
    lease = 2.0
    second = replica(catalog, sink, "replica-b", lease=lease)
    claimed_at = time.monotonic()
    with pytest.raises(Killed):
        first.handle_all(run)

    second.sweep()
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    assert pending() == 1  # finished 10 minutes ago, not handled
    assert sink.received() == []
    assert failed_webhooks(receiver) == []

    deadline = time.monotonic() + DEADLINE
    while catalog.runs.finishes_unhandled([run[0].run_id]) and time.monotonic() < deadline:
        second.sweep()
        threading.Event().wait(0.1)
    assert not catalog.runs.finishes_unhandled([run[0].run_id])
    second.sweep()
    assert pending() == 0
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(run[0].run_id)]


def test_a_finish_claim_is_exclusive_taken_back_by_its_holder_taken_over_after_the_lease_and_ended_by_the_mark(
    catalog: CatalogStores,
):
    run = failed_run(datetime.now(UTC))
    catalog.runs.fold_run_events(run)
    run_id = run[0].run_id
    runs = catalog.runs

    assert runs.claim_finishes([run_id], "a", 60) == ({run_id}, set())
    assert runs.claim_finishes([run_id], "b", 60) == (set(), {run_id})  # held by a
    assert runs.claim_finishes([run_id], "a", 60) == ({run_id}, set())  # its holder again (a failure handed back)
    with catalog.database.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE runs SET finish_claimed_at = :at WHERE run_id = :id"),
            {"at": datetime.now(UTC) - timedelta(seconds=61), "id": str(run_id)},
        )
    assert runs.claim_finishes([run_id], "b", 60) == ({run_id}, set())  # a's lease is over: b takes it over
    assert runs.claim_finishes([run_id], "a", 60) == (set(), {run_id})
    assert runs.mark_finishes_handled([run_id]) == {run_id}
    assert runs.claim_finishes([run_id], "a", 60) == (set(), set())  # handled: no one's to claim
    assert runs.claim_finishes([uuid.uuid4()], "a", 60) == (set(), set())  # unknown


@pytest.mark.parametrize("point", ["mail", "webhook"])
def test_another_replicas_sweep_leaves_the_unsent_notifications_of_a_finish_held_by_a_live_claim(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, point: str
):
    """Replica A is in the middle of a run's finish (its mail, or its webhook, claimed in the ledger and not sent)
    when replica B sweeps. Before, B's retry of unsent notifications found them claimed and unsent and sent them:
    twice with A's. Now B leaves them to A, whose claim is live; A sends them once."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    poll = list(events([(80, 0), (0, 20)]))
    first, second = replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")
    holding, release = held_in(first, point)
    meanwhile(lambda: first.handle_all(poll), holding, release, second.sweep)
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == [str(poll[0].run_id)]
    second.sweep()  # the finish handled: nothing left to send
    assert len(sink.received()) == 1
    assert len(failed_webhooks(receiver)) == 1


def test_a_replica_renews_its_claim_before_each_finish_of_a_poll_and_leaves_one_taken_over_meanwhile(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """A poll finishing two runs: replica A claims both at once, then spends long on the first one's mail; the
    second one's claim outlives its lease (made old here, not waited for) and replica B's sweep takes it over, B in
    the middle of its mail. Before, A went on to the second finish too and sent its mail a second time. Now A renews
    each claim before its finish, finds the second one B's, and leaves it."""
    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    early, late = failed_run(datetime.now(UTC)), failed_run(datetime.now(UTC) - timedelta(minutes=10))
    first, second = replica(catalog, sink, "replica-a"), replica(catalog, sink, "replica-b")
    holding_a, release_a = held_in(first, "mail")
    holding_b, release_b = held_in(second, "mail")
    thread_a = threading.Thread(target=lambda: first.handle_all(early + late))
    thread_b = threading.Thread(target=second.sweep)
    thread_a.start()
    try:
        assert holding_a.wait(DEADLINE), "replica A never reached its first mail"
        with catalog.database.engine.begin() as connection:  # A's claim of the second run: older than its lease
            connection.execute(
                sa.text("UPDATE runs SET finish_claimed_at = :at WHERE run_id = :id"),
                {"at": datetime.now(UTC) - timedelta(seconds=61), "id": str(late[0].run_id)},
            )
        thread_b.start()
        assert holding_b.wait(DEADLINE), "replica B never reached the second run's mail"
        release_a.set()
        thread_a.join(DEADLINE)
        assert not thread_a.is_alive()
    finally:
        release_a.set()
        release_b.set()
        thread_a.join(DEADLINE)
        if thread_b.ident is not None:
            thread_b.join(DEADLINE)
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"] * 2
    assert sorted(failed_webhooks(receiver)) == sorted([str(early[0].run_id), str(late[0].run_id)])
    assert not catalog.runs.finishes_unhandled([early[0].run_id, late[0].run_id])


def test_a_slow_mail_renews_the_claim_before_the_webhook_and_leaves_a_finish_taken_over_meanwhile(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    """Replica A finishing a failed run spends longer than a quarter of its lease on the mail (an SMTP server
    retried), and replica B took the finish over meanwhile. Before, A went on to the final webhook and recorded the
    finish (B would send both again). Now A renews its claim between the two sends, finds it B's, and leaves the
    rest of the finish to B."""

    catalog.definitions.apply(with_policy(receiver, ["failed"], max_failure_percent=10))
    run = failed_run(datetime.now(UTC))
    first = replica(catalog, sink, "replica-a")
    holding, release = held_in(first, "mail")
    thread = threading.Thread(target=lambda: first.handle_all(run))
    thread.start()
    try:
        assert holding.wait(DEADLINE), "replica A never reached its mail"
        with catalog.database.engine.begin() as connection:  # B's claim now (A's lease over, B took it)
            connection.execute(
                sa.text("UPDATE runs SET finish_claimed_by = 'replica-b' WHERE run_id = :id"),
                {"id": str(run[0].run_id)},
            )
        real = time.monotonic
        later = type("Later", (), {"monotonic": staticmethod(lambda: real() + first.finish_lease_seconds)})
        monkeypatch.setattr(notifying, "time", later)  # A's mail took longer than its whole lease
        release.set()
        thread.join(DEADLINE)
        assert not thread.is_alive()
    finally:
        release.set()
        thread.join(DEADLINE)
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert failed_webhooks(receiver) == []  # left to B, the finish's holder now
    assert catalog.runs.finishes_unhandled([run[0].run_id]) == {run[0].run_id}  # not recorded by A


def test_the_sweep_sends_no_paused_webhook_for_a_schedule_an_operator_paused_before_the_run(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """A failed run of a definition that pauses after 1 failed run, its schedule paused by an operator already; the
    run's poll dead-lettered before any replica claimed its finish. Before, the sweep took its finish for a retry
    of an interrupted one and sent a ``paused`` webhook the run never caused. Now: its failed webhook only."""
    definition = with_policy(receiver, ["paused", "failed"], pause_after_failed_runs=1)
    disabled = definition.schedule.model_copy(update={"enabled": False})
    catalog.definitions.apply(definition.model_copy(update={"schedule": disabled}))
    run = failed_run(datetime.now(UTC) - timedelta(minutes=10))
    catalog.runs.fold_run_events(run)

    replica(catalog, sink, "replica-b").sweep()

    types = [verified(receipt)["type"] for receipt in receiver.receipts() if receipt.status == 200]
    assert types == ["member_export.run.failed"]
    assert not catalog.runs.finishes_unhandled([run[0].run_id])


def test_the_sweeps_missed_run_email_is_one_attempt_through_a_failing_smtp_server(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """A missed run whose finish no one did, the SMTP server failing: the sweep tries its email once (an outage must
    not hold the sweep through the mailer's retries and backoff) and leaves it unsent for the next sweep. Before,
    it went through all the mailer's attempts; then the same sweep tried it again (its retries of what is unsent),
    now SMTP failing in a sweep ends its emails' attempts for that sweep."""
    catalog.definitions.apply(with_policy(receiver, ["missed"], max_failure_percent=10))
    at = datetime.now(UTC) - timedelta(minutes=10)
    catalog.runs.fold_run_events(
        [RunMissed(run_id=uuid.uuid4(), definition="nightly", scheduled_for=at, at=at, reason="scheduler down")]
    )
    notifier = replica(catalog, sink, "replica-b")
    notifier.mailer.port = free_port()  # nothing listens: every attempt fails at once
    notifier.mailer.max_wait = 0.01
    sends: list[int] = []
    real = notifier.mailer._send_once

    def counted(message: Any, *args: Any) -> None:
        sends.append(1)
        real(message, *args)

    notifier.mailer._send_once = counted  # type: ignore[method-assign,assignment]

    notifier.sweep()

    assert len(sends) == 1  # the finish's one attempt; not the same sweep's retry of what is unsent
    assert sink.received() == []


def test_a_finish_claims_lease_is_judged_on_the_catalogs_clock_not_on_a_replicas_own(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Replica B's clock runs 61 s ahead of A's: before, B judged A's fresh claim (60 s lease) on its own clock,
    found it over and took it over; now the catalog's clock judges every claim, and B leaves it to A."""
    run = failed_run(datetime.now(UTC))
    catalog.runs.fold_run_events(run)
    run_id = run[0].run_id
    assert catalog.runs.claim_finishes([run_id], "a", 60) == ({run_id}, set())
    ahead = datetime.now(UTC) + timedelta(seconds=61)
    monkeypatch.setattr(runs_store, "now", lambda: ahead)  # B's clock
    assert catalog.runs.claim_finishes([run_id], "b", 60) == (set(), {run_id})
    assert catalog.runs.finishes_held([run_id], "b", 60) == {run_id}
    assert catalog.runs.finishes_pending(60, 10) == (0, [])  # finished just now on the catalog's clock


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL's plan follows its statistics
def test_the_sweeps_pending_finishes_query_reads_the_partial_index_of_unhandled_runs(catalog: CatalogStores):
    """The sweep's look for finishes no one did reads ``ix_runs_finish_unhandled`` (the few runs not handled), not
    every final run ever through ``ix_runs_status``: on SQLite, whose planner took the status index before."""
    engine = catalog.database.engine
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO runs "
                "(run_id, definition, status, extraction_complete, extracted, batches_done, delivered, failed, "
                "error_samples, last_event_at, finished_at, finish_handled_at, retried, mass_removal_allowed) "
                "SELECT printf('%036d', i), 'd', 'succeeded', 1, 0, 0, 0, 0, '[]', '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 0, 0 FROM n"
            )
        )
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM runs" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        catalog.runs.fold_run_events(failed_run(datetime.now(UTC) - timedelta(minutes=10)))
        statements.clear()
        assert catalog.runs.finishes_pending(60, 10)[0] == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 2  # the count, then the runs
    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert any("ix_runs_finish_unhandled" in step for step in plan), plan
            assert not any("ix_runs_status" in step for step in plan), plan
