"""The time a poll's handling, or a sweep, may spend sending notifications, and whether SMTP failed in it.

Both run on the consumer loop's thread: a poll's handling (and the sweep between two polls) that outlasts the
consumer's poll interval takes the notifier out of its group, and the next replica meets the same poll. So each
gets a budget (``EXPORT_NOTIFIER_SEND_BUDGET_SECONDS``): an email's retries stop at it (each attempt's timeout cut to
what is left), and nothing is sent once it is spent. And once an email failed for a reason another email would
meet as well (the server down, hung, closing: :func:`server_unusable`), the round's other emails are not tried:
SMTP is taken as down until the next round. What is not sent is left in the ledger, unsent and due: the next sweep
sends it.
"""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Iterator

import structlog

from services.notifier.mailer import MIN_ATTEMPT_SECONDS

log = structlog.get_logger(__name__)

#: A round's budget by default: well under the consumer's poll interval (600 s) with the sweep's own beside it. No
#: send begins with less than :data:`MIN_ATTEMPT_SECONDS` of it left, and each (an SMTP attempt, a webhook channel's)
#: is cut to what is left: a round ends within its budget, the catalog's work aside.
DEFAULT_SEND_BUDGET_SECONDS = 120.0


def final_for_this_email(exc: BaseException) -> bool:
    """Whether a send's failure is the server's final answer about this email, so it is given up: every recipient
    refused for good (5xx), or its content refused for good (a 5xx after DATA). Not a failure every email would meet
    (the server refusing the sender or the login, lacking STARTTLS or AUTH, answering 5xx to MAIL FROM: a
    misconfiguration or an outage that an operator fixes), which is tried again after its backoff."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPDataError):
        return exc.smtp_code >= 500
    return False


def server_unusable(exc: BaseException) -> bool:
    """Whether a send's failure is one every email would meet now: no connection, no answer in time, the connection
    lost, the server closing (421), refusing the sender or the login, or lacking what the settings ask (STARTTLS,
    AUTH). Not an answer about this email (its recipients or its content refused, for now or for good: another
    email may go)."""
    return not isinstance(exc, (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError))


class SendRound:
    """One round at a time (:meth:`open`): a poll's handling, or a sweep; rounds opened inside one are part of it."""

    def __init__(self, budget_seconds: float = DEFAULT_SEND_BUDGET_SECONDS) -> None:
        self.budget_seconds = budget_seconds
        #: The round's end (a ``time.monotonic()`` instant, as the mailer's ``until``), None outside a round.
        self.until: float | None = None
        #: An email of the round failed for a reason the others would meet too.
        self.smtp_failed = False
        self._left = 0

    @contextlib.contextmanager
    def open(self, what: str) -> Iterator[SendRound]:
        """The round (``what``: for the log), or the one already open."""
        if self.until is not None:
            yield self
            return
        self.until, self.smtp_failed, self._left = time.monotonic() + self.budget_seconds, False, 0
        try:
            yield self
        finally:
            if self._left:
                log.warning(
                    "notifications left for the sweep",
                    round=what,
                    notifications=self._left,
                    reason="an email failed (SMTP down or refusing for now)"
                    if self.smtp_failed
                    else f"the round's {self.budget_seconds:g} s (EXPORT_NOTIFIER_SEND_BUDGET_SECONDS) were spent",
                )
            self.until, self.smtp_failed, self._left = None, False, 0

    def time_left(self) -> bool:
        """Whether a send may begin now: at least :data:`MIN_ATTEMPT_SECONDS` of the budget left, so that its attempt
        (cut to what is left) can finish within it. Before, one began with any time left and was given 1 s at least:
        the round overran its budget by up to that second (an email), or by a webhook channel's whole timeout."""
        return self.until is None or time.monotonic() + MIN_ATTEMPT_SECONDS <= self.until

    def seconds_left(self) -> float | None:
        """The budget's time left (None outside a round): an attempt's timeout is cut to it."""
        return None if self.until is None else max(self.until - time.monotonic(), 0.0)

    def mail_open(self) -> bool:
        """Whether an email may be tried now: within the budget, and no email of the round failed for a transient
        reason."""
        return not self.smtp_failed and self.time_left()

    def email_failed(self, exc: BaseException) -> None:
        """An email's send failed: a failure every other email would meet (:func:`server_unusable`) closes the
        round's mail."""
        if server_unusable(exc):
            self.smtp_failed = True

    def left(self, count: int = 1) -> None:
        """``count`` notifications not tried in this round (left unsent and due, for the sweep)."""
        self._left += count
