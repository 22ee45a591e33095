"""A circuit breaker email's recipient the SMTP server refuses for now (a 4xx answer to RCPT TO, e.g. greylisting) while
it takes the email for the others is mailed again, alone, by the sweep: never again those who took it, until it takes
it or the email's attempts are spent (then recorded sent, not delivered to it), as the runs' emails (session 50).

Before: such a recipient was recorded as not delivered, never mailed again. Real SMTP server (aiosmtpd) on 127.0.0.1,
the outbox on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from devtools.smtp_sink import serving
from services.notifier.breaker_notices import BreakerMails
from services.notifier.mailer import SmtpMailer
from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.stores import CatalogStores
from shared.catalog.tables import BreakerMailRow
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
from shared.domain.email_retries import EMAIL_MAX_ATTEMPTS
from shared.events import CircuitBreakerChanged
from tests.integration.test_smtp_refused_for_now import Greylisting

pytestmark = pytest.mark.integration

OPENED = CircuitBreakerChanged(profile="crm", state="open", episode=1)
RECIPIENTS = ["oncall@example.com", "later@example.com", "tpyo@example.com"]


@pytest.fixture
def greylisting(request: pytest.FixtureRequest) -> Iterator[Greylisting]:
    handler = Greylisting(request.param)  # later@ refused for now its first ``param`` times, tpyo@ for good
    with serving(handler, handler.port):
        yield handler


def breaker_mails(catalog: CatalogStores, port: int, recipients: list[str]) -> BreakerMails:
    catalog.definitions.apply(ConnectionProfile(name="crm", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="crm", path="/m"))
    catalog.definitions.apply(
        ExportDefinition.model_validate(
            {
                "name": "nightly",
                "query": "q",
                "template": "t",
                "notifications": {"error": {"enabled": True, "recipients": recipients}},
            }
        )
    )
    mailer = SmtpMailer("127.0.0.1", port, timeout=5.0, max_attempts=2, max_wait=0.05)
    return BreakerMails(catalog.definitions, SqlBreakerMailStore(catalog.database), mailer, "x@example.com")


def outbox_row(catalog: CatalogStores) -> dict[str, Any]:
    with catalog.database.transaction() as session:
        [row] = session.scalars(select(BreakerMailRow)).all()
        return {c.key: getattr(row, c.key) for c in BreakerMailRow.__table__.columns}


@pytest.mark.parametrize("greylisting", [1], indirect=True)
def test_a_breaker_emails_recipient_refused_for_now_is_mailed_again_alone_by_the_sweep(
    catalog: CatalogStores, greylisting: Greylisting
):
    mails = breaker_mails(catalog, greylisting.port, RECIPIENTS)

    mails.handle(OPENED)
    pending = outbox_row(catalog)
    mails.retry_unsent()  # the next sweep
    mails.retry_unsent()  # and the one after: nothing more
    sent = outbox_row(catalog)

    # Before: [["oncall@example.com"]], later@ never mailed again.
    assert greylisting.received == [["oncall@example.com"], ["later@example.com"]]
    assert greylisting.asked == {"oncall@example.com": 1, "later@example.com": 2, "tpyo@example.com": 1}
    assert pending["sent_at"] is None
    assert pending["attempts"] == 1
    assert pending["last_error"].startswith(
        "not delivered yet to 2 of 3 recipients (the others took it; 1 refused for now, mailed again alone): "
    )
    assert sent["sent_at"] is not None
    assert sent["last_error"] == (
        "not delivered to 1 of 3 recipients (the others took it): "
        "SMTPRecipientsRefused: {'tpyo@example.com': (550, b'5.1.1 no such user')}"
    )


@pytest.mark.parametrize("greylisting", [EMAIL_MAX_ATTEMPTS + 5], indirect=True)
def test_a_breaker_emails_recipient_refused_for_now_at_every_attempt_is_given_up_with_its_attempts(
    catalog: CatalogStores, greylisting: Greylisting
):
    mails = breaker_mails(catalog, greylisting.port, RECIPIENTS[:2])

    mails.handle(OPENED)
    for _ in range(EMAIL_MAX_ATTEMPTS + 2):  # two sweeps more than it takes: nothing more is sent
        mails.retry_unsent()
    row = outbox_row(catalog)

    assert greylisting.received == [["oncall@example.com"]]
    assert greylisting.asked == {"oncall@example.com": 1, "later@example.com": EMAIL_MAX_ATTEMPTS}
    assert row["sent_at"] is not None
    assert row["last_error"] == (
        "not delivered to 1 of 2 recipients (the others took it): "
        "SMTPRecipientsRefused: {'later@example.com': (451, b'4.7.1 greylisted, try again later')}"
    )
