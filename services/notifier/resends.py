"""One attempt of an email some of whose recipients refused it for now before (a 4xx answer to RCPT TO while the
others took it): mailed to them alone, never again to those who took it; the rule of the runs' emails and of the
circuit breaker emails (each keeps its refusals so far in its row: the ledger's, the outbox's)."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from services.notifier.mailer import Refused, SmtpMailer
from shared.domain.email_retries import RefusedRecipients, refused_for_now


@dataclass(frozen=True)
class Attempt:
    """What an attempt left: every refusal so far of the recipients (those still recipients), and this attempt's
    own answers (the recipients it was refused by)."""

    refused: RefusedRecipients
    answered: Refused

    @property
    def for_now(self) -> list[str]:
        """The recipients refused for now, to mail again alone."""
        return refused_for_now(self.refused)


def attempt(
    mailer: SmtpMailer,
    message: EmailMessage,
    recipients: list[str],
    earlier: RefusedRecipients,
    *,
    max_attempts: int | None,
    until: float | None,
) -> Attempt:
    """Send ``message`` to every recipient, or (``earlier``: some refused it for now while the others took it) to
    those still recipients alone. Raises the mailer's failure (``OSError``, ``smtplib.SMTPException``), except, for a
    send to those alone, their refusing it again: the others took it before."""
    again = [address for address in refused_for_now(earlier) if address in recipients]
    answered: Refused = {}
    try:
        if again or not earlier:
            answered = mailer.send(message, max_attempts=max_attempts, until=until, recipients=again or recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        if not earlier:
            raise
        answered = exc.recipients  # each one mailed again refused again: the others took it before
    # Those mailed again and not refused now took it; the earlier refusals of the others (still recipients) stand.
    refused = {address: answer for address, answer in earlier.items() if address in recipients and address not in again}
    refused |= {address: (code, text.decode(errors="replace")) for address, (code, text) in answered.items()}
    return Attempt(refused, answered)


def as_refused(refused: RefusedRecipients) -> Refused:
    """Refusals as kept (each text a string) as smtplib answers them (each text in bytes), for the reason's text."""
    return {address: (code, text.encode()) for address, (code, text) in refused.items()}
