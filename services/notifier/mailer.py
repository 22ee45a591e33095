"""Send email over SMTP (plain, STARTTLS or implicit TLS), retrying a failing server with backoff; each attempt
bounded as a whole by the timeout."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from typing import Any

from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from shared.domain.masking import Masking
from shared.exception_reasons import exception_reason

#: The recipients an SMTP server refused while it took an email for the others: each address with the server's code and
#: text (smtplib's ``sendmail`` answer).
Refused = dict[str, tuple[int, bytes]]

#: Longest wait between two attempts of one email (the backoff's cap).
MAX_WAIT_SECONDS = 30.0

#: Shortest time left in a send's budget (``until``) for an attempt to begin: none begins with less (it could not
#: connect and be answered before the budget's end), and an attempt begun has what is left, never more.
MIN_ATTEMPT_SECONDS = 1.0


def longest_send_seconds(max_attempts: int, timeout: float, max_wait: float = MAX_WAIT_SECONDS) -> float:
    """How long one email's send may take at most, its retries through a slow or failing server: each attempt
    up to ``timeout`` as a whole (:class:`_Deadline`: a connection or a reply that never comes, a server answering
    every command slowly), and the backoff's longest wait in between."""
    return max_attempts * timeout + (max_attempts - 1) * max_wait


class AttemptTimedOut(TimeoutError):
    """An attempt at an email outlasted the SMTP timeout as a whole (each exchange may have been within it)."""


class _Deadline:
    """One attempt's end: once ``seconds`` have passed, the connection's socket (:meth:`watch`) is shut down, so a
    reply still trickling in ends at once and nothing more is sent: smtplib's timeout bounds each exchange with the
    server, this the whole attempt. The socket is watched through a duplicate of its descriptor: a shutdown reaches
    the connection also once TLS wraps the socket, and during the handshake."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._watched: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def left(self) -> float:
        """The time left (a socket's timeout: never 0, which would make it non-blocking)."""
        return max(self.at - time.monotonic(), 0.001)

    def over(self) -> bool:
        """Whether the attempt's time is over: by the timer, or by the clock (a socket's timeout, set to the time
        left, may fire just before the timer: its error is the deadline's all the same)."""
        return self.expired or time.monotonic() >= self.at

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._watched = sock.dup()
            if self.expired:
                self._shut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        if self._watched is not None:
            with contextlib.suppress(OSError):
                self._watched.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def running(self) -> Iterator[_Deadline]:
        """The attempt, its timer started; a failure after the deadline is :class:`AttemptTimedOut`."""
        self._timer.start()
        try:
            yield self
        except OSError as exc:  # smtplib's errors are OSErrors too
            answered = isinstance(exc, smtplib.SMTPException) and not isinstance(exc, smtplib.SMTPServerDisconnected)
            if self.over() and not answered:  # a server's answer (a permanent 5xx) stays what it is at the deadline
                raise AttemptTimedOut(
                    f"the SMTP server took longer than {self.seconds:g} s for one attempt at the email "
                    "(EXPORT_SMTP_TIMEOUT_SECONDS)"
                ) from exc
            raise
        finally:
            self._timer.cancel()
            with self._lock:
                if self._watched is not None:
                    self._watched.close()


class _BoundedSmtp(smtplib.SMTP):
    """SMTP whose socket is watched by a :class:`_Deadline`, each exchange's timeout cut to the time left."""

    def __init__(self, deadline: _Deadline, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), min(timeout, self.deadline.left()), self.source_address)
        self.deadline.watch(sock)
        return self._wrapped(sock)

    def _wrapped(self, sock: socket.socket) -> socket.socket:
        return sock

    def send(self, s: Any) -> None:
        if self.deadline.expired:
            raise smtplib.SMTPServerDisconnected("the attempt's time is over")
        if self.sock is not None:
            with contextlib.suppress(OSError):  # a socket gone bad: the send says so, as smtplib's own
                self.sock.settimeout(min(self.timeout, self.deadline.left()))
        super().send(s)


class _BoundedSmtpSsl(_BoundedSmtp, smtplib.SMTP_SSL):
    """Implicit TLS, as :class:`_BoundedSmtp`: the socket watched before its handshake."""

    def _wrapped(self, sock: socket.socket) -> socket.socket:
        return self.context.wrap_socket(sock, server_hostname=self._host)  # type: ignore[attr-defined]


class SmtpMailer:
    """One SMTP server; each send opens a connection (notifications are rare; no pool needed)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "none",
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 30.0,
        max_attempts: int = 8,
        max_wait: float = MAX_WAIT_SECONDS,
        ca_file: str | None = None,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        self.timeout = timeout
        self.max_attempts, self.max_wait = max_attempts, max_wait
        self.ca_file = ca_file

    def undelivered_reason(self, refused: Refused, recipients: int, *, yet: bool = False, note: str = "") -> str:
        """What an email sent to some recipients says of the others, for the ledger and the outbox (masked and cut as a
        failure's reason): ``not delivered to 1 of 2 recipients (the others took it): SMTPRecipientsRefused: …``;
        ``not delivered yet`` while some are to be mailed again (``yet``); ``note`` added to the parenthesis."""
        undelivered = "not delivered yet" if yet else "not delivered"
        lead = f"{undelivered} to {len(refused)} of {recipients} recipients (the others took it{note}): "
        return exception_reason(smtplib.SMTPRecipientsRefused(refused), self._masking, lead=lead)

    def failure_reason(self, exc: BaseException) -> str:
        """Why a send failed, for the run's notification ledger and the breaker mail outbox: the exception's type
        and message, cut as every failure's reason is, with the SMTP password masked (a server's refusal may
        quote the AUTH exchange: the password, or its base64 as AUTH PLAIN and LOGIN send it) and credentials
        by their shape."""
        return exception_reason(exc, self._masking)

    def _masking(self) -> Masking:
        if self.password is None:
            return Masking()
        password = self.password.get_secret_value()
        sent = [f"\0{self.username or ''}\0{password}", password]  # AUTH PLAIN's and LOGIN's, base64-encoded
        return Masking.of([password, *(base64.b64encode(value.encode()).decode() for value in sent)])

    def _send_once(
        self, message: EmailMessage, until: float | None = None, recipients: Sequence[str] | None = None
    ) -> Refused:
        """One attempt, bounded as a whole by the timeout (:class:`_Deadline`), each exchange within it too, and by
        ``until`` (a ``time.monotonic()`` instant): the attempt ends there, whatever it was at (its caller begins none
        with less than :data:`MIN_ATTEMPT_SECONDS` left: :class:`_StopAt`, the round's ``time_left``)."""
        # Certificates are always verified: against the system's CAs, or the operator's own bundle.
        context = ssl.create_default_context(cafile=self.ca_file)
        seconds = self.timeout
        if until is not None:
            seconds = min(seconds, max(until - time.monotonic(), _NO_TIME))
        with _Deadline(seconds).running() as deadline:
            smtp: smtplib.SMTP
            if self.security == "tls":
                smtp = _BoundedSmtpSsl(deadline, host=self.host, port=self.port, timeout=self.timeout, context=context)
            else:
                smtp = _BoundedSmtp(deadline, host=self.host, port=self.port, timeout=self.timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=context)
                if self.username and self.password:
                    smtp.login(self.username, self.password.get_secret_value())
                # The envelope's recipients as given (each one address), never parsed back from the To header.
                return smtp.send_message(message, to_addrs=list(recipients) if recipients is not None else None)

    def send(
        self,
        message: EmailMessage,
        *,
        max_attempts: int | None = None,
        until: float | None = None,
        recipients: Sequence[str] | None = None,
    ) -> Refused:
        """Send, retrying connection failures and 4xx answers; raise the last error when retries run out, or when
        the next attempt would start after ``until`` (a ``time.monotonic()`` instant: the caller's time budget, which
        also cuts each attempt's timeout). ``recipients``: the envelope's (default: the message's To). Returns the
        recipients the server refused while it took the email for the others (each with its answer: not delivered
        to them; empty when it went to every one)."""
        stop = stop_after_attempt(max_attempts or self.max_attempts)
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop if until is None else stop | _StopAt(until),
            wait=wait_random_exponential(multiplier=1, max=self.max_wait),
            reraise=True,
        )
        return retrying(self._send_once, message, until, recipients)


#: An attempt's time when its budget is over already (a timer's and a socket's timeout must be above 0).
_NO_TIME = 0.001


class _StopAt(stop_base):
    """Stop retrying when the next attempt would start with less than :data:`MIN_ATTEMPT_SECONDS` left before
    ``until`` (``time.monotonic()``): it could not finish within the budget (before, it began whenever it started
    before ``until``, given 1 s at least: a budget's last attempt overran it by up to 1 s)."""

    def __init__(self, until: float) -> None:
        self.until = until

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) + MIN_ATTEMPT_SECONDS > self.until


def is_transient(exc: BaseException) -> bool:
    """Connection trouble and temporary (4xx) answers; a 5xx answer (e.g. recipient refused) is final."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        # Every recipient refused: worth another attempt only if some refusal was temporary (4xx).
        return any(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):
        # smtplib's other errors are OSErrors too, but say what the server or its set-up is (e.g. STARTTLS or AUTH
        # not offered): another attempt would get the same answer.
        return False
    return isinstance(exc, OSError)
