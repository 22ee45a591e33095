"""Send email over SMTP (plain, STARTTLS or implicit TLS), retrying a failing server with backoff."""

from __future__ import annotations

import base64
import smtplib
import ssl
from email.message import EmailMessage

from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from shared.domain.masking import Masking
from shared.exception_reasons import exception_reason

#: Longest wait between two attempts of one email (the backoff's cap).
MAX_WAIT_SECONDS = 30.0


def longest_send_seconds(max_attempts: int, timeout: float, max_wait: float = MAX_WAIT_SECONDS) -> float:
    """How long one email's send may take at most, its retries through a slow or failing server: each attempt
    up to ``timeout`` (a connection, or a reply, that never comes), and the backoff's longest wait in between."""
    return max_attempts * timeout + (max_attempts - 1) * max_wait


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

    def _send_once(self, message: EmailMessage) -> None:
        # Certificates are always verified: against the system's CAs, or the operator's own bundle.
        context = ssl.create_default_context(cafile=self.ca_file)
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username and self.password:
                smtp.login(self.username, self.password.get_secret_value())
            smtp.send_message(message)

    def send(self, message: EmailMessage, *, max_attempts: int | None = None) -> None:
        """Send, retrying connection failures and 4xx answers; raise the last error when retries run out."""
        retrying = Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(max_attempts or self.max_attempts),
            wait=wait_random_exponential(multiplier=1, max=self.max_wait),
            reraise=True,
        )
        retrying(self._send_once, message)


def _worth_retrying(exc: BaseException) -> bool:
    """Connection trouble and temporary (4xx) answers; a 5xx answer (e.g. recipient refused) is final."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, OSError | smtplib.SMTPServerDisconnected)
