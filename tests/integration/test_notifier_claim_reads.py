"""An email's recipients refused so far (some refused for now, to mail again alone) and its failed attempts so far are
read by the statement that claims it: a send and its mark read nothing more of their own (the mark's own update
aside), whether a poll's handling or a sweep claims it.

Before (session 50): each send of an email read its refusals again, one ``SELECT`` per run of the email (a digest: one
per missed run), 100 more statements for 100 emails. Before (session 51): each failed send read its attempts twice
more (the decision to mail again, then the mark), 200 more statements for 100 emails. Real SMTP server (aiosmtpd) on
127.0.0.1, the real ledger on SQLite and PostgreSQL.

Before (session 52): each mark of an attempt read the email's row (a locked ``SELECT``) before its ``UPDATE``, a
webhook's failed attempt read its attempts once more before that, and the give-up was decided from the attempts the
claim had read before the send: an email whose lease ran out mid-send, claimed again and tried by another replica, got
a 21st attempt (or was recorded with 21). Now a mark is one ``UPDATE ... RETURNING`` that counts the attempt and
decides the give-up from the locked row."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import serving
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.catalog.tables import NotificationRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.email_retries import EMAIL_MAX_ATTEMPTS, NotificationMark
from shared.events import AnyRunEvent, RunFailed, RunStarted, Trigger
from tests.integration.test_notifier_refusals_shown import Picky, definition, notifier_on
from tests.integration.test_notifier_webhooks import definition as hooked_definition
from tests.integration.test_notifier_webhooks import missed_runs, signing_secret, sink
from tests.integration.test_notifier_webhooks import notifier_on as hooked_notifier_on

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink.
__all__ = ["signing_secret", "sink"]

pytestmark = pytest.mark.integration

EMAILS = 100
#: The webhooks' attempts at most, in the webhooks' tests' notifier (``hooked_notifier_on``).
HOOK_ATTEMPTS = 5


class Greylisting(Picky):
    """As :class:`Picky`, and ``later@…`` refused for now (451) beside others, taken alone."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("later@") and envelope.rcpt_tos:
            return "451 4.7.1 greylisted, try again later"
        return await super().handle_RCPT(server, session, envelope, address, options)


class Busy(Picky):
    """As :class:`Picky`, and ``busy@…`` refused for now (451) at every attempt, even alone: its email fails. Counts
    those attempts (``tries``)."""

    tries = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("busy@"):
            self.tries += 1
            return "451 4.3.2 mailbox busy, try again later"
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture
def busy() -> Iterator[Busy]:
    handler = Busy()
    with serving(handler, handler.port):
        yield handler


@pytest.fixture
def greylisting() -> Iterator[Greylisting]:
    handler = Greylisting()
    with serving(handler, handler.port):
        yield handler


def statements_of(catalog: CatalogStores, work: Callable[[], Any]) -> list[str]:
    """The SQL statements ``work`` sends to the catalog."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(statement)

    engine = catalog.database.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        work()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return seen


def ledger_statements(statements: list[str]) -> int:
    """The statements among ``statements`` that read or write the notifications ledger."""
    return sum(" notifications" in statement for statement in statements)


def keyed_reads(statements: list[str]) -> int:
    """The reads of one row of the notifications ledger (by its key) among ``statements``."""
    return sum(
        statement.lstrip().startswith("SELECT")
        and "FROM notifications" in statement
        and "WHERE notifications.run_id = " in statement
        for statement in statements
    )


def test_an_emails_refusals_are_read_by_its_claim_not_once_more_per_send(
    catalog: CatalogStores, greylisting: Greylisting
):
    catalog.definitions.apply(definition("greylisted", ["oncall@example.com", "later@example.com"]))
    notifier = notifier_on(catalog, greylisting.port)
    failed: list[AnyRunEvent] = [
        RunFailed(run_id=uuid.uuid4(), definition="greylisted", reason="boom") for _ in range(EMAILS)
    ]

    first = statements_of(catalog, lambda: notifier.handle_all(failed))
    again = statements_of(catalog, notifier.sweep)  # backoff 0: each mailed again to later@ alone, now taken

    assert greylisting.received == [["oncall@example.com"]] * EMAILS + [["later@example.com"]] * EMAILS
    assert catalog.runs.unsent_notifications(limit=1_000) == []
    # Reads of an email's ledger row, per 100 emails: none (a poll's first sends, a sweep's send again). Before
    # session 51: 400 and 200 (its refusals read once more at each send, its attempts twice at the first); before
    # session 52: 100 and 100 (its mark's locked read).
    assert keyed_reads(first) == 0
    assert keyed_reads(again) == 0
    # The ledger's statements, per 100 emails: a poll's, three an email (its insert, its claim, its mark); a sweep's,
    # its read of those due and its claim, then one an email (its mark). Before session 52: 400 and 202 (of the
    # poll's 704 statements in all and the sweep's 306; now 604 and 206).
    assert ledger_statements(first) == 3 * EMAILS
    assert ledger_statements(again) == EMAILS + 2
    # Counted as ever: one failed attempt each (the first, refused for now by later@), then sent.
    assert {
        (n.kind, n.status, n.attempts) for event in failed for n in catalog.runs.notifications_of(event.run_id)
    } == {("error", "sent", 1)}


FAILING = 20


def test_a_failed_emails_attempts_are_read_by_its_claim_and_counted_exactly(catalog: CatalogStores, busy: Busy):
    catalog.definitions.apply(definition("busy", ["busy@example.com"]))
    notifier = notifier_on(catalog, busy.port)
    failed: list[AnyRunEvent] = [
        RunFailed(run_id=uuid.uuid4(), definition="busy", reason="boom") for _ in range(FAILING)
    ]

    first = statements_of(catalog, lambda: notifier.handle_all(failed))
    again = statements_of(catalog, notifier.sweep)  # backoff 0: each tried again at once, failing again

    assert busy.received == []
    # Reads of an email's ledger row at each failed send: none. Before session 51: two each (its attempts, then its
    # mark's); before session 52, one (its mark's locked read).
    assert keyed_reads(first) == 0
    assert keyed_reads(again) == 0
    # The ledger's statements: a poll's, three an email; a sweep's, one an email and two more. Before session 52: 80
    # and 42 for these 20 emails, 400 and 210 per 100 (of 144 and 66 statements in all; now 124 and 46).
    assert ledger_statements(first) == 3 * FAILING
    assert ledger_statements(again) == FAILING + 2
    # Each failed attempt counted once, the count the claims read carried on from one to the next.
    assert {
        (n.kind, n.status, n.attempts) for event in failed for n in catalog.runs.notifications_of(event.run_id)
    } == {("error", "pending", 2)}


def replica_on(catalog: CatalogStores, port: int, name: str, lease: float) -> Notifier:
    """A notifier replica named ``name`` whose claims last ``lease`` seconds, mailing through the server at ``port``
    (one attempt per send, a failed email due again at once)."""
    notifier = notifier_on(catalog, port)
    notifier.mailer = SmtpMailer("127.0.0.1", port, timeout=5.0, max_attempts=1, max_wait=0.05)
    notifier.replica_id, notifier.finish_lease_seconds = name, lease
    return notifier


@pytest.mark.parametrize("tried", [EMAIL_MAX_ATTEMPTS - 2, EMAIL_MAX_ATTEMPTS - 1])
def test_an_email_claimed_again_mid_send_once_its_lease_ran_out_never_gets_an_attempt_past_its_maximum(
    catalog: CatalogStores, busy: Busy, tried: int
):
    catalog.definitions.apply(definition("busy", ["busy@example.com"]))
    first, second = replica_on(catalog, busy.port, "a", lease=1.0), replica_on(catalog, busy.port, "b", lease=1.0)
    run = RunFailed(run_id=uuid.uuid4(), definition="busy", reason="boom")
    first.handle_all([run])  # its first attempt, failed
    for _ in range(tried - 1):
        first.sweep()  # one more each
    [email] = catalog.runs.notifications_of(run.run_id)
    assert (email.status, email.attempts) == ("pending", tried)

    # Replica A's sweep claims it (reading ``tried`` attempts) and its send is held past the lease: replica B's sweep
    # claims it again and tries it (failing), then A's send goes on (failing too).
    send, held = first.mailer.send, threading.Event()

    def held_past_the_lease(*args: Any, **kwargs: Any) -> Any:
        if not held.is_set():
            held.set()
            tries, deadline = busy.tries, time.monotonic() + 30.0
            while busy.tries == tries:  # B's sweep claims it once A's lease is over (the catalog's clock), tries it
                assert time.monotonic() < deadline, "A's claim never ran out"
                threading.Event().wait(0.05)
                second.sweep()
        return send(*args, **kwargs)

    first.mailer.send = held_past_the_lease  # type: ignore[method-assign]
    before = busy.tries
    first.sweep()
    assert held.is_set()
    assert busy.tries == before + 2  # both replicas' attempts

    # Given up at its 20th failed attempt, whichever mark came second; no sweep tries it again. Before: recorded
    # pending with 20 attempts (each mark decided from the 18 its claim read), tried a 21st time by the next sweep;
    # or given up with 21 attempts recorded.
    [email] = catalog.runs.notifications_of(run.run_id)
    assert (email.status, email.attempts) == ("given_up", EMAIL_MAX_ATTEMPTS)
    tries = busy.tries
    first.sweep()
    second.sweep()
    assert busy.tries == tries
    [email] = catalog.runs.notifications_of(run.run_id)
    assert (email.status, email.attempts) == ("given_up", EMAIL_MAX_ATTEMPTS)


HOOKS = 20


def test_a_failed_webhooks_attempts_are_read_by_its_claim_and_counted_exactly(catalog: CatalogStores, sink: Any):
    with HttpReceiver(reject_status=503) as receiver:
        catalog.definitions.apply(hooked_definition(receiver, events=["failed"]))
        notifier = hooked_notifier_on(catalog, sink)
        failed: list[AnyRunEvent] = [
            RunFailed(run_id=uuid.uuid4(), definition="nightly", reason="boom") for _ in range(HOOKS)
        ]
        first = statements_of(catalog, lambda: notifier.handle_all(failed))
        deadline = time.monotonic() + 30.0
        while len(catalog.runs.unsent_notifications(limit=1_000)) < HOOKS:  # their backoff (10 ms) over
            assert time.monotonic() < deadline, "the webhooks never came due again"
            threading.Event().wait(0.01)
        again = statements_of(catalog, notifier.sweep)  # each tried again, refused again
        assert [receipt.status for receipt in receiver.receipts()] == [503] * 2 * HOOKS

    # Reads of a webhook's ledger row at each failed attempt: none (its attempts read by its claim, its mark one
    # UPDATE ... RETURNING). Before: 60 a poll and 40 a sweep for these 20 webhooks (its attempts, its mark's locked
    # read, and a poll's third).
    assert keyed_reads(first) == 0
    assert keyed_reads(again) == 0
    # The ledger's statements: a poll's, three a webhook and three an email (each run's error email is sent); a
    # sweep's, one a webhook and two more. Before: 180 and 62 (of 244 and 86 statements in all; now 184 and 46).
    assert ledger_statements(first) == 6 * HOOKS
    assert ledger_statements(again) == HOOKS + 2
    hooks = [n for event in failed for n in catalog.runs.notifications_of(event.run_id) if n.channel is not None]
    assert {(n.status, n.attempts) for n in hooks} == {("pending", 2)}
    assert len(hooks) == HOOKS


def test_a_mark_decides_from_the_attempts_its_row_holds(catalog: CatalogStores):
    runs, kind = catalog.runs, "error"

    def pending_with(attempts: int) -> uuid.UUID:
        run_id = uuid.uuid4()
        assert runs.claim_notification(run_id, kind, ["oncall@example.com", "later@example.com"])
        with catalog.database.begin() as connection:
            connection.execute(
                sa.update(NotificationRow).where(NotificationRow.run_id == str(run_id)).values(attempts=attempts)
            )
        return run_id

    def mark(run_id: uuid.UUID, **how: Any) -> tuple[Any, ...]:
        written = runs.mark_notification(
            run_id, kind, error="451 greylisted", retry_at=datetime.now(UTC), max_attempts=EMAIL_MAX_ATTEMPTS, **how
        )
        [email] = runs.notifications_of(run_id)
        return written, email.status, email.attempts, email.last_error

    spent = "not delivered to 1 of 2 recipients (the others took it)"
    # Refused for now by some while the others took it: mailed again while attempts remain, else recorded sent.
    assert mark(pending_with(18), sent_when_spent=spent) == (
        NotificationMark(19, sent=False, given_up=False),
        "pending",
        19,
        "451 greylisted",
    )
    assert mark(pending_with(19), sent_when_spent=spent) == (
        NotificationMark(19, sent=True, given_up=False),
        "sent",
        19,
        spent,
    )
    # A failed attempt: given up at the maximum, as the row counts it; one every email would meet spends none.
    assert mark(pending_with(19))[:3] == (NotificationMark(20, sent=False, given_up=True), "given_up", 20)
    assert mark(pending_with(19), counted=False)[:3] == (
        NotificationMark(19, sent=False, given_up=False),
        "pending",
        19,
    )
    # A notification another's mark ended (given up, sent): a failure's mark writes nothing, nor does a second send's.
    ended = pending_with(19)
    mark(ended)
    assert mark(ended)[:3] == (None, "given_up", 20)
    sent = pending_with(3)
    assert runs.mark_notification(sent, kind) == NotificationMark(3, sent=True, given_up=False)
    assert mark(sent)[:3] == (None, "sent", 3)
    assert runs.mark_notification(sent, kind) is None


def marks(statements: list[str]) -> int:
    """The marks of notifications' attempts among ``statements`` (the updates that write a last error: a send's, a
    failure's; never a claim's, a renewal's or a release's). On PostgreSQL, one of several rows starts with the
    sub-select that locks them in key order (``WITH ... FOR NO KEY UPDATE``), in the same statement."""
    return sum(
        statement.lstrip().startswith(("UPDATE notifications", "WITH locked_in_key_order"))
        and "UPDATE notifications" in statement
        and "last_error" in statement
        for statement in statements
    )


@pytest.mark.parametrize("by_poll", [True, False], ids=["a poll", "one event"])
def test_a_started_webhook_claimed_by_its_runs_fold_is_marked_failed_without_reading_its_attempts(
    catalog: CatalogStores, sink: Any, by_poll: bool
):
    with HttpReceiver(reject_status=503) as receiver:
        catalog.definitions.apply(hooked_definition(receiver, events=["started"]))
        notifier = hooked_notifier_on(catalog, sink)
        started: list[AnyRunEvent] = [
            RunStarted(run_id=uuid.uuid4(), definition="nightly", trigger=Trigger.SCHEDULE) for _ in range(HOOKS)
        ]
        if by_poll:
            handled = statements_of(catalog, lambda: notifier.handle_all(started))
        else:
            handled = statements_of(catalog, lambda: [notifier.handle(event) for event in started])
        assert [receipt.status for receipt in receiver.receipts()] == [503] * HOOKS

    # Its fold inserted it (an insert's claim: no failed attempt yet), so its failed attempt reads nothing. Before: one
    # read of its attempts each, 20 for these 20 webhooks.
    assert keyed_reads(handled) == 0
    # The ledger's statements: the fold's insert and the mark, two a webhook. Before: three, 60 here (of 84
    # statements in all a poll, 141 one event at a time; now 64 and 121).
    assert ledger_statements(handled) == 2 * HOOKS
    hooks = [n for event in started for n in catalog.runs.notifications_of(event.run_id)]
    assert {(n.kind, n.status, n.attempts, n.last_error) for n in hooks} == {
        ("webhook:ops:started", "pending", 1, 'HTTP 503: {"accepted": false}')
    }
    assert len(hooks) == HOOKS


MISSED = 40


def busy_digest_definition(receiver: HttpReceiver) -> ExportDefinition:
    """The webhooks' tests' definition, its ``missed`` webhook to ``receiver``, its error email to ``busy@…``."""
    fields = hooked_definition(receiver, events=["missed"]).model_dump(mode="json")
    fields["notifications"]["error"]["recipients"] = ["busy@example.com"]
    return ExportDefinition.model_validate(fields)


def test_a_digests_runs_are_marked_by_one_statement_each_by_its_own_attempts(
    catalog: CatalogStores, sink: Any, busy: Busy
):
    with HttpReceiver(reject_status=503) as receiver:
        catalog.definitions.apply(busy_digest_definition(receiver))
        notifier = hooked_notifier_on(catalog, sink)
        notifier.mailer = SmtpMailer("127.0.0.1", busy.port, timeout=5.0, max_attempts=1, max_wait=0.05)
        outage = missed_runs(MISSED, datetime(2026, 7, 1, tzinfo=UTC))

        first = statements_of(catalog, lambda: notifier.handle_all(outage))

        # Half the runs near the end of their attempts (as a longer outage would leave them): one digest each time, yet
        # each run's own count decides its give-up.
        spent = {event.run_id for event in outage[::2]}
        with catalog.database.begin() as connection:
            for kind, attempts in (("error", EMAIL_MAX_ATTEMPTS - 1), ("webhook:ops:missed", HOOK_ATTEMPTS - 1)):
                connection.execute(
                    sa.update(NotificationRow)
                    .where(NotificationRow.run_id.in_([str(run_id) for run_id in spent]), NotificationRow.kind == kind)
                    .values(attempts=attempts)
                )
        deadline = time.monotonic() + 30.0
        while len(catalog.runs.unsent_notifications(limit=1_000)) < 2 * MISSED:  # the webhook's backoff (10 ms) over
            assert time.monotonic() < deadline, "the digest's notifications never came due again"
            threading.Event().wait(0.01)
        again = statements_of(catalog, notifier.sweep)
        assert [receipt.status for receipt in receiver.receipts()] == [503, 503]  # one digest webhook each time
    assert busy.received == []

    # One mark a digest, whatever its runs: the email's and the webhook's. Before: one a run (80 a time here).
    assert marks(first) == 2
    assert marks(again) == 2
    # The ledger's statements: a poll's, each run's two claims (an insert each, which reads nothing more) and each
    # digest's claim and mark; a sweep's, its read of those due, its claim, and the two marks. Before: 242 and 82 (of
    # 367 and 166 statements in all; now 209 and 88); a claim's insert was read back (80 reads by key here).
    assert keyed_reads(first) == 0
    assert ledger_statements(first) == 2 * MISSED + 4
    assert ledger_statements(again) == 4
    # Each run's row as its own count had it: given up at its maximum, else pending with its attempts counted.
    rows = {
        (event.run_id in spent, n.kind, n.status, n.attempts)
        for event in outage
        for n in catalog.runs.notifications_of(event.run_id)
    }
    assert rows == {
        (True, "error", "given_up", EMAIL_MAX_ATTEMPTS),
        (True, "webhook:ops:missed", "given_up", HOOK_ATTEMPTS),
        (False, "error", "pending", 2),
        (False, "webhook:ops:missed", "pending", 2),
    }


def test_a_delivered_digests_runs_are_marked_sent_by_one_statement(catalog: CatalogStores, sink: Any):
    with HttpReceiver() as receiver:
        catalog.definitions.apply(hooked_definition(receiver, events=["missed"]))
        notifier = hooked_notifier_on(catalog, sink)
        outage = missed_runs(MISSED, datetime(2026, 7, 1, tzinfo=UTC))
        handled = statements_of(catalog, lambda: notifier.handle_all(outage))
        assert [receipt.status for receipt in receiver.receipts()] == [200]
    [digest] = sink.received()
    assert digest.subject == f"[member export] nightly: {MISSED} scheduled runs missed"
    # One mark the email digest, one the webhook's. Before: one a run, 80 here (of 367 statements in all; now 289).
    assert marks(handled) == 2
    assert {
        (n.kind, n.status, n.attempts) for event in outage for n in catalog.runs.notifications_of(event.run_id)
    } == {("error", "sent", 0), ("webhook:ops:missed", "sent", 0)}
