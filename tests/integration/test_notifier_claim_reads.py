"""An email's recipients refused so far (some refused for now, to mail again alone) and its failed attempts so far are
read by the statement that claims it: a send and its mark read nothing more of their own (the mark's own update
aside), whether a poll's handling or a sweep claims it.

Before (session 50): each send of an email read its refusals again, one ``SELECT`` per run of the email (a digest: one
per missed run), 100 more statements for 100 emails. Before (session 51): each failed send read its attempts twice
more (the decision to mail again, then the mark), 200 more statements for 100 emails. Real SMTP server (aiosmtpd) on
127.0.0.1, the real ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.smtp_sink import serving
from shared.catalog import CatalogStores
from shared.events import AnyRunEvent, RunFailed
from tests.integration.test_notifier_refusals_shown import Picky, definition, notifier_on

pytestmark = pytest.mark.integration

EMAILS = 100


class Greylisting(Picky):
    """As :class:`Picky`, and ``later@…`` refused for now (451) beside others, taken alone."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("later@") and envelope.rcpt_tos:
            return "451 4.7.1 greylisted, try again later"
        return await super().handle_RCPT(server, session, envelope, address, options)


class Busy(Picky):
    """As :class:`Picky`, and ``busy@…`` refused for now (451) at every attempt, even alone: its email fails."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("busy@"):
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
    # Reads of an email's ledger row, per 100 emails: its mark's (a poll's first sends, a sweep's send again). Before
    # session 51: 400 and 200 (its refusals read once more at each send, its attempts twice at the first); before
    # this session, 300 and 100 (its attempts read twice at the first).
    assert keyed_reads(first) == EMAILS
    assert keyed_reads(again) == EMAILS
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
    # Reads of an email's ledger row at each failed send: its mark's alone. Before: two each (its attempts, then its
    # mark's).
    assert keyed_reads(first) == FAILING
    assert keyed_reads(again) == FAILING
    # Each failed attempt counted once, the count the claims read carried on from one to the next.
    assert {
        (n.kind, n.status, n.attempts) for event in failed for n in catalog.runs.notifications_of(event.run_id)
    } == {("error", "pending", 2)}
