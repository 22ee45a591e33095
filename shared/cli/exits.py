"""exportctl's exit codes and its one way of failing: a message on stderr, never a traceback.

A command either returns an exit code or raises :class:`CliError`; ``main`` prints the error's message
as ``exportctl: <message>`` and exits with its code. Imports nothing heavy (exportctl's start-up).
"""

from __future__ import annotations

import sys

from shared.cli.output import printable

OK = 0
#: A run that did not succeed, or did not finish within ``--timeout``; also an unexpected error (a bug).
RUN_FAILED = 1
#: The command line is wrong (an unknown kind, a malformed option), or a setting is missing or does not fit.
USAGE = 2
#: An object or a run that does not exist.
NOT_FOUND = 3
#: Refused or invalid: a rule, a permission, a conflict, an invalid manifest.
REFUSED = 4
#: The admin API, the catalog or Kafka cannot be reached.
UNREACHABLE = 5

#: The codes as the help and the README list them.
DOCUMENTED = {
    OK: "done",
    RUN_FAILED: "a run did not succeed or did not finish within --timeout (or an unexpected error)",
    USAGE: "usage error (a bad option, an unknown kind, a missing or wrong setting)",
    NOT_FOUND: "not found (an object, a run, a context)",
    REFUSED: "refused or invalid (a rule, a permission, a conflict, an invalid manifest)",
    UNREACHABLE: "unreachable (the admin API, the catalog or Kafka)",
}


class CliError(Exception):
    """A command that cannot go on: ``message`` for the user, ``code`` for the shell."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = USAGE) -> int:
    """Print ``exportctl: message`` to stderr; return ``code`` (a usage error unless told)."""
    print(printable(f"exportctl: {message}"), file=sys.stderr)  # it may quote a label, a partner's answer
    return code


def code_of_status(status: int) -> int:
    """The exit code of an admin API refusal with HTTP ``status``."""
    if status == 404:
        return NOT_FOUND
    if status >= 500:
        return UNREACHABLE
    return REFUSED


def code_of_refusal(refusal: Exception) -> int:
    """The exit code of an application-layer refusal (its ``status``, as the admin API would answer)."""
    return code_of_status(int(getattr(refusal, "status", 422)))
