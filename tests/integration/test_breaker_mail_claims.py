"""Two notifier replicas sweeping the circuit breaker emails' outbox at the same moment send each email once: each
sweep claims the unsent emails it is about to try, at once, with a lease (the outbox row's next attempt time, on the
catalog's clock), and sends only those; a change's handling claims its email the same way; a sweep that dies after
its claim leaves the email to a later sweep once the lease is over.

Real SMTP server (aiosmtpd); the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.smtp_sink import SmtpSink
from services.notifier.breaker_notices import BreakerMails
from services.notifier.mailer import SmtpMailer
from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.lease_claims import MAX_CLAIMS
from shared.catalog.stores import CatalogStores
from shared.catalog.tables import BreakerMailRow
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
from shared.domain.email_retries import NotificationMark
from shared.domain.fleet import BreakerChange
from shared.events import CircuitBreakerChanged
from tests.integration.test_notifier_finish_once import Killed
from tests.integration.test_notifier_sweep_claims import CatalogGone, lost_once_claimed, sweep_both_at_once, waiting

pytestmark = pytest.mark.integration

#: Longest wait for a thread or a condition (a deadline, never a pause to synchronise on).
DEADLINE = 30.0
DEFINITIONS = ["nightly", "weekly", "hourly"]
OPENED = CircuitBreakerChanged(profile="crm", state="open", episode=1)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def unsent_outbox(catalog: CatalogStores) -> None:
    """The profile ``crm``'s breaker opened; its emails to the three definitions using it were claimed and their
    attempt failed (SMTP away): unsent in the outbox, the sweep's to send."""
    catalog.definitions.apply(ConnectionProfile(name="crm", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="crm", path="/m"))
    for name in DEFINITIONS:
        catalog.definitions.apply(
            ExportDefinition.model_validate(
                {
                    "name": name,
                    "query": "q",
                    "template": "t",
                    "notifications": {"error": {"enabled": True, "recipients": [f"oncall-{name}@example.com"]}},
                }
            )
        )
    down = replica(catalog, SmtpMailer("127.0.0.1", 9, max_attempts=1))
    down.handle(OPENED)
    assert len(down.outbox.unsent()) == len(DEFINITIONS)


def replica(catalog: CatalogStores, mailer: SmtpMailer, lease_seconds: float | None = None) -> BreakerMails:
    """One notifier replica's breaker emails (its own outbox store and mailer, the catalog shared)."""
    mails = BreakerMails(catalog.definitions, SqlBreakerMailStore(catalog.database), mailer, "x@example.com")
    if lease_seconds is not None:
        mails.lease_seconds = lease_seconds
    return mails


def received(sink: SmtpSink) -> Counter[tuple[str, str]]:
    """The breaker emails received, by recipient and change (a duplicate counts twice)."""
    return Counter((str(m.message["To"]), str(m.message["X-Export-Circuit"])) for m in sink.received())


def assert_each_sent_once(sink: SmtpSink) -> None:
    assert received(sink) == {(f"oncall-{name}@example.com", "crm; open; 1"): 1 for name in DEFINITIONS}


def each_send_waits_for(mails: BreakerMails, condition: Callable[[], bool], reached: threading.Event) -> None:
    """Make ``mails``' sends set ``reached``, then wait until ``condition`` holds."""
    mails.mailer.send = waiting(mails.mailer.send, condition, reached)  # type: ignore[method-assign]


def test_two_replicas_sweeping_at_once_send_each_breaker_email_once(catalog: CatalogStores, sink: SmtpSink):
    """Replicas A and B sweep the outbox at the same moment (released together by a barrier), each holding its first
    send until the other has reached a send of its own or finished its sweep. Before, both read the same unsent rows
    and both sent every email: each definition's recipients got the breaker's opening twice. Now one sweep claims
    each email and sends it once."""
    unsent_outbox(catalog)
    replicas = [replica(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1)) for _ in ("a", "b")]
    sweep_both_at_once(
        [mails._retry_unsent for mails in replicas],  # the sweep's retry, raising what it would log
        lambda me, condition, reached: each_send_waits_for(replicas[me], condition, reached),
    )

    assert_each_sent_once(sink)
    for mails in replicas:  # and again: nothing left to send
        mails.retry_unsent()
        mails.handle(OPENED)  # the change redelivered: sent already
    assert_each_sent_once(sink)
    assert replicas[0].outbox.unsent() == []


def test_a_sweep_held_in_a_send_keeps_its_claims_from_the_other_replicas_sweep_and_a_redelivered_change(
    catalog: CatalogStores, sink: SmtpSink
):
    """Replica A's sweep is held in its first send (a slow SMTP server) until replica B has swept the outbox and
    handled the change again (redelivered). Before, B sent every email meanwhile and A, released, sent them all
    again. Now B finds A's claims and sends nothing; A sends each once."""
    unsent_outbox(catalog)
    first = replica(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1))
    second = replica(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1))
    second_done, holding = threading.Event(), threading.Event()
    each_send_waits_for(first, second_done.is_set, holding)
    thread = threading.Thread(target=first.retry_unsent)
    thread.start()
    try:
        assert holding.wait(DEADLINE), "replica A never reached its first send"
        second.retry_unsent()
        second.handle(OPENED)
        assert received(sink) == {}
    finally:
        second_done.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert_each_sent_once(sink)


def test_a_sweep_killed_after_its_claim_leaves_the_email_to_a_later_sweep_once_the_lease_is_over(
    catalog: CatalogStores, sink: SmtpSink
):
    """Replica A's sweep claims the unsent emails and dies at its first send. Replica B's sweep right after sends
    the ones A did not get to (released as A's sweep ended), not the one A was sending (its claim live: A may have
    sent it); once the lease is over, a sweep of B sends it, once. Before, B sent it at once."""
    unsent_outbox(catalog)
    lease = 2.0
    first = replica(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1), lease)
    second = replica(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1), lease)

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    first.mailer.send = dies  # type: ignore[method-assign]
    claimed_at = time.monotonic()
    with pytest.raises(Killed):
        first.retry_unsent()

    second.retry_unsent()
    assert time.monotonic() - claimed_at < lease, "too slow to tell: the lease was over already"
    assert sum(received(sink).values()) == len(DEFINITIONS) - 1

    deadline = time.monotonic() + DEADLINE
    while sum(received(sink).values()) < len(DEFINITIONS):
        assert time.monotonic() < deadline, "the email A died sending was never sent"
        second.retry_unsent()
        threading.Event().wait(0.1)
    assert time.monotonic() - claimed_at >= lease
    second.retry_unsent()
    assert_each_sent_once(sink)


def test_an_outbox_claim_is_exclusive_renewed_by_its_holder_taken_over_after_the_lease_and_ended_by_a_mark(
    catalog: CatalogStores,
):
    outbox = SqlBreakerMailStore(catalog.database)
    change = BreakerChange("crm", "open", 1)
    assert outbox.claim(change, "nightly", 60)  # a change's handling: claimed
    assert not outbox.claim(change, "nightly", 60)  # redelivered while it is sent: not claimed again
    assert outbox.unsent() == []  # claimed: not due for the sweep
    outbox.mark(change, "nightly", error="SMTP away")  # the claim ends: due at the next sweep
    key = ("crm", change.ordinal, "nightly")
    assert [(c.profile, c.ordinal, name) for c, name in outbox.unsent()] == [key]

    claims = outbox.claim_unsent_notifications([key], 60)
    assert list(claims) == [key]
    assert outbox.claim_unsent_notifications([key], 60) == {}  # another sweep: not its
    assert not outbox.claim(change, "nightly", 60)
    renewed = outbox.renew_notification_claims(claims, 60)
    assert list(renewed) == [key]
    assert outbox.renew_notification_claims(claims, 60) == {}  # the old claim is no longer anyone's
    with catalog.database.begin() as connection:  # its holder died: its claim two minutes old
        connection.execute(
            sa.update(sa.table("circuit_breaker_mails", sa.column("next_attempt_at"))).values(
                next_attempt_at=sa.literal_column(
                    "datetime('now', '-120 seconds')"
                    if catalog.database.engine.dialect.name == "sqlite"
                    else "now() - interval '120 seconds'"
                )
            )
        )
    taken = outbox.claim_unsent_notifications([key], 60)
    assert list(taken) == [key]  # taken over after the lease
    assert outbox.renew_notification_claims(renewed, 60) == {}  # the dead holder's: no longer
    outbox.release_notification_claims(renewed)  # a stale claim releases nothing
    assert outbox.claim_unsent_notifications([key], 60) == {}
    outbox.release_notification_claims(taken)  # not tried: due again at once
    assert list(outbox.claim_unsent_notifications([key], 60)) == [key]
    outbox.mark(change, "nightly")  # sent: nothing to claim any more
    assert outbox.claim_unsent_notifications([key], 0.0) == {}
    assert outbox.unsent() == []


def test_an_outbox_claim_whose_transaction_fails_claims_nothing(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """A sweep's claim of 660 unsent breaker emails fails: its transaction is lost once the statement claiming the
    last of them ran. On the breaker branch before its merge, the claim was one transaction per 500: the first 500
    stayed claimed, not due for the whole lease, though the sweep that claimed them had stopped. Now the claim is one
    statement in one transaction, as the notifications' ledger's: rolled back whole, every email is due again at
    once. More than 10,000 at once are refused, never cut in parts."""
    outbox = SqlBreakerMailStore(catalog.database)
    changed_at = datetime.now(UTC)
    rows = [{"profile": "crm", "ordinal": 2, "definition": f"d{n:04}", "changed_at": changed_at} for n in range(660)]
    with catalog.database.begin() as connection:
        connection.execute(sa.insert(BreakerMailRow), rows)
    keys = [(change.profile, change.ordinal, name) for change, name in outbox.unsent(limit=1_000)]
    assert len(keys) == 660
    last = max(keys)
    lost_once_claimed(monkeypatch, catalog.database, lambda row: tuple(row[:3]) == last)
    with pytest.raises(CatalogGone):
        outbox.claim_unsent_notifications(keys, 600)
    monkeypatch.undo()
    assert len(outbox.unsent(limit=1_000)) == 660  # due now, not after the lease
    assert len(outbox.claim_unsent_notifications(keys, 600)) == 660
    with pytest.raises(ValueError, match=f"at most {MAX_CLAIMS} "):
        outbox.claim_unsent_notifications([("crm", 2, f"e{n}") for n in range(MAX_CLAIMS + 1)], 600)
    # As many as may be claimed at once make one statement the database takes (PostgreSQL's parser refused 8,000).
    assert outbox.claim_unsent_notifications([("crm", 2, f"e{n}") for n in range(MAX_CLAIMS)], 600) == {}


def test_an_outbox_mark_decides_from_the_attempts_its_row_holds(catalog: CatalogStores):
    """A breaker email's mark is one ``UPDATE ... RETURNING`` that counts the attempt and decides from the row's
    attempts. Before (session 52), it read the row first and counted on from it whatever it held: the failure of an
    attempt that overlapped another replica's (its lease over mid-send), marked after that one gave the email up at
    its 20th, recorded a 21st; and whether a recipient refused for now was mailed again was decided from the attempts
    the claim had read before the send."""
    outbox = SqlBreakerMailStore(catalog.database)
    spent = "not delivered to 1 of 2 recipients (the others took it)"

    def pending_with(attempts: int, ordinal: int) -> BreakerChange:
        change = BreakerChange("crm", "open", ordinal)
        assert outbox.claim(change, "nightly", 60)
        with catalog.database.begin() as connection:
            connection.execute(
                sa.update(BreakerMailRow).where(BreakerMailRow.ordinal == change.ordinal).values(attempts=attempts)
            )
        return change

    def kept(change: BreakerChange) -> tuple[Any, ...]:
        with catalog.database.begin() as connection:
            row = connection.execute(
                sa.select(
                    BreakerMailRow.attempts, BreakerMailRow.sent_at.is_not(None), BreakerMailRow.last_error
                ).where(BreakerMailRow.ordinal == change.ordinal)
            ).one()
        return tuple(row)

    greylisted = pending_with(18, 1)
    assert outbox.mark(greylisted, "nightly", error="451", sent_when_spent=spent) == NotificationMark(19, False, False)
    assert kept(greylisted) == (19, False, "451")
    spending = pending_with(19, 2)
    assert outbox.mark(spending, "nightly", error="451", sent_when_spent=spent) == NotificationMark(19, True, False)
    assert kept(spending) == (19, True, spent)

    overlapped = pending_with(19, 3)
    assert outbox.mark(overlapped, "nightly", error="451") == NotificationMark(20, False, True)  # given up
    assert outbox.mark(overlapped, "nightly", error="451") is None  # the other replica's attempt: nothing more
    assert kept(overlapped) == (20, False, "451")
    assert outbox.mark(pending_with(19, 4), "nightly", error="down", counted=False) == NotificationMark(
        19, False, False
    )
