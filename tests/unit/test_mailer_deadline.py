"""Which failures of an email's attempt the attempt's deadline labels as its own (:class:`AttemptTimedOut`, retried,
the reason naming EXPORT_SMTP_TIMEOUT_SECONDS), and which it leaves as they are."""

from __future__ import annotations

import smtplib

import pytest

from services.notifier.mailer import AttemptTimedOut, _Deadline, is_transient

#: Longest wait for the deadline's timer (a deadline on a condition, never a pause to synchronise on).
DEADLINE = 10.0


def _fail_once_expired(error: Exception, seconds: float = 0.01) -> None:
    """An attempt that fails with ``error`` once its deadline's timer fired."""
    with _Deadline(seconds).running() as deadline:
        deadline._timer.join(DEADLINE)  # the timer's thread ends once it fired
        assert deadline.expired
        raise error


@pytest.mark.parametrize(
    "refused",
    [
        smtplib.SMTPDataError(554, b"message refused"),
        smtplib.SMTPRecipientsRefused({"oncall@example.com": (550, b"no such user")}),
    ],
)
def test_a_permanent_refusal_answered_as_the_time_ran_out_stays_permanent(refused: smtplib.SMTPException):
    """Before, any SMTP error once the timer had fired was relabelled a timeout: a 554 'message refused' (or every
    recipient refused) that came with the deadline was retried, and its reason said the server was slow."""

    with pytest.raises(type(refused)) as failure:
        _fail_once_expired(refused)

    assert failure.value is refused  # the server's answer: a 5xx is not retried (is_transient)


@pytest.mark.parametrize(
    "error",
    [smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out"), TimeoutError("timed out")],
)
def test_a_connection_failing_once_the_time_is_over_is_the_deadlines(error: Exception):
    with pytest.raises(AttemptTimedOut) as failure:
        _fail_once_expired(error)

    assert "EXPORT_SMTP_TIMEOUT_SECONDS" in str(failure.value)
    assert is_transient(failure.value)


def test_a_connection_failing_within_the_time_is_left_as_it_is():
    error = smtplib.SMTPServerDisconnected("Connection unexpectedly closed")

    with pytest.raises(smtplib.SMTPServerDisconnected) as failure, _Deadline(60.0).running():
        raise error

    assert failure.value is error
