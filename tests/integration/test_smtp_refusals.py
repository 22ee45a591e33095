"""A recipient the SMTP server refuses for good is not asked again: the email's attempts end at the first refusal.

Before, smtplib's ``SMTPRecipientsRefused`` (every recipient refused) is an ``OSError`` but not a response error,
so it was retried as connection trouble: ``EXPORT_SMTP_MAX_ATTEMPTS`` attempts against a server that had said no.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from devtools.processes import free_port
from devtools.smtp_sink import serving
from services.notifier.mailer import SmtpMailer

pytestmark = pytest.mark.integration


class _RefusingRecipients:
    """Answers every RCPT with ``code`` and counts how often it was asked."""

    def __init__(self, code: int) -> None:
        self.code, self.asked, self.port = code, 0, free_port()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.asked += 1
        return f"{self.code} {'mailbox unavailable' if self.code >= 500 else 'try again later'}"


@pytest.fixture
def refusing(request: pytest.FixtureRequest) -> Iterator[_RefusingRecipients]:
    handler = _RefusingRecipients(request.param)
    with serving(handler, handler.port):
        yield handler


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "exports@example.com", "nobody@example.com", "run failed"
    message.set_content("the run failed")
    return message


@pytest.mark.parametrize(
    ("refusing", "asked"),
    [(550, 1), (451, 3)],  # refused for good: asked once; refused for now: asked until the 3 attempts run out
    indirect=["refusing"],
)
def test_a_recipient_refused_for_good_is_asked_once_and_one_refused_for_now_until_the_attempts_run_out(
    refusing: _RefusingRecipients, asked: int
):
    mailer = SmtpMailer("127.0.0.1", refusing.port, max_attempts=3, max_wait=0.05)

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        mailer.send(_message())

    assert refusing.asked == asked
