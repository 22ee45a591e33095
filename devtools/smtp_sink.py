"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message, for the demo and the tests.

python -m devtools.smtp_sink --port 2525 --dir .local/mail
"""

from __future__ import annotations

import argparse
import contextlib
import email
import functools
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from devtools.processes import Managed, free_port


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the SMTP server received it."""

    sender: str
    recipients: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        """The plain-text part."""
        part = self.message.get_body(("plain",)) if hasattr(self.message, "get_body") else None
        return str(part.get_content()) if part is not None else ""


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's API
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        mail = ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message)
        with self.sink.lock:
            self.sink.messages.append(mail)
            if self.sink.directory is not None:
                path = self.sink.directory / f"{len(self.sink.messages):04d}.eml"
                path.write_bytes(envelope.content)
        return "250 Message accepted for delivery"


class SmtpSink(Managed):
    """Start with ``start()`` (or as a context manager); messages land in ``messages``.

    ``security``: ``none``, ``starttls`` (required before mail) or ``tls`` (implicit TLS), with
    ``tls_context`` holding the server certificate. ``credentials`` (user, password) makes AUTH required.
    """

    def __init__(
        self,
        port: int | None = None,
        directory: Path | None = None,
        *,
        security: str = "none",
        tls_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.messages: list[ReceivedMail] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()
        options: dict[str, Any] = {}
        if security == "starttls":
            options |= {"tls_context": tls_context, "require_starttls": True}
        if credentials is not None:
            # aiosmtpd tells only STARTTLS sessions apart as encrypted; an implicit-TLS one is too.
            options |= {
                "authenticator": self._authenticator(credentials),
                "auth_required": True,
                "auth_require_tls": security != "tls",
            }
        # Made by start(): aiosmtpd's controller opens an event loop as it is made, which a sink never started
        # (a chaos pipeline stopped after a failed start) would leave open.
        self._new_controller = functools.partial(
            Controller,
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=tls_context if security == "tls" else None,
            server_hostname="localhost" if security == "tls" else None,
            **options,
        )
        self._controller: Controller | None = None

    def _authenticator(self, credentials: tuple[str, str]) -> Any:
        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            good = (
                isinstance(auth_data, LoginPassword)
                and (
                    auth_data.login.decode(),
                    auth_data.password.decode(),
                )
                == credentials
            )
            if good:
                with self.lock:
                    self.logins.append(auth_data.login.decode())
            return AuthResult(success=good)

        return authenticate

    def start(self) -> SmtpSink:
        self._controller = self._new_controller()
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.messages)


@contextlib.contextmanager
def serving(handler: Any, port: int) -> Iterator[Any]:
    """An SMTP server on 127.0.0.1:``port`` answering with ``handler`` (aiosmtpd's ``handle_RCPT``, ``handle_DATA``,
    …), for as long as the block lasts."""
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", type=Path, default=Path(".local/mail"))
    args = parser.parse_args()
    sink = SmtpSink(args.port, args.dir).start()
    print(f"SMTP sink on 127.0.0.1:{sink.port}, messages saved in {args.dir}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sink.stop()


if __name__ == "__main__":
    main()
