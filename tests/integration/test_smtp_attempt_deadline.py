"""One attempt at an email is bounded as a whole by the SMTP timeout, not only each exchange with the server: a server
answering every command slowly, each answer well within the timeout, cannot hold a send past it (so the notifier's
start-up check, finish lease > attempts x timeout and the backoff, is a bound). A real SMTP dialogue over a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from services.notifier.mailer import SmtpMailer

pytestmark = pytest.mark.integration

#: Longest wait for the server's thread (a deadline, never a pause to synchronise on).
DEADLINE = 30.0


class SlowSmtpServer:
    """An SMTP server on 127.0.0.1 that answers each command (and greets) after ``delay`` seconds: a server trickling
    its answers. Keeps the commands it read, and each message it took (its DATA to the final dot)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SlowSmtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(DEADLINE)

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection, connection.makefile("rb") as lines:
            try:
                self._answer(connection, b"220 slow.example ESMTP")
                while line := lines.readline():
                    command = line.decode().strip()
                    self.commands.append(command)
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "DATA":
                        self._answer(connection, b"354 go on")
                        message = b"".join(iter(lines.readline, b".\r\n"))
                        self.messages.append(message)
                        self._answer(connection, b"250 taken")
                    elif verb == "EHLO":
                        self._answer(connection, b"250 slow.example")
                    elif verb == "QUIT":
                        self._answer(connection, b"221 bye")
                        break
                    else:
                        self._answer(connection, b"250 ok")
            except OSError:
                pass
        self.closed.set()

    def _answer(self, connection: socket.socket, reply: bytes) -> None:
        time.sleep(self.delay)  # the server being slow (what is tested), not a wait for the client
        connection.sendall(reply + b"\r\n")


def message() -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "member-export@example.com", "oncall@example.com", "nightly: failed"
    mail.set_content("The run failed.")
    return mail


@pytest.fixture
def slow() -> Iterator[SlowSmtpServer]:
    # Each answer in 0.4 s, within the 1 s timeout; an email's dialogue has 7 of them (2.8 s).
    with SlowSmtpServer(delay=0.4) as server:
        yield server


def test_a_server_answering_every_command_slowly_cannot_hold_an_attempt_past_the_timeout(slow: SlowSmtpServer):
    """Before, each answer came within the timeout, so the attempt went on to the end (2.8 s for a 1 s timeout) and
    the email was sent: a notifier's finish could outlast its lease. Now the attempt ends at the timeout, failed, the
    message not taken (the sweep retries it), and the failure says why."""
    mailer = SmtpMailer("127.0.0.1", slow.port, timeout=1.0, max_attempts=1)

    started = time.monotonic()
    with pytest.raises(TimeoutError) as failure:
        mailer.send(message())

    assert time.monotonic() - started < 1.5  # the timeout, not the 2.8 s dialogue

    assert slow.closed.wait(DEADLINE)  # the connection was ended by the client
    assert slow.messages == []
    assert "DATA" not in slow.commands
    assert "took longer than 1 s for one attempt at the email" in mailer.failure_reason(failure.value)


def test_a_server_answering_within_the_timeout_as_a_whole_takes_the_email():
    with SlowSmtpServer(delay=0.05) as server:
        SmtpMailer("127.0.0.1", server.port, timeout=5.0, max_attempts=1).send(message())
        assert server.closed.wait(DEADLINE)
    [taken] = server.messages
    assert b"Subject: nightly: failed" in taken
    assert server.commands[-1] == "QUIT"
