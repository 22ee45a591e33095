"""The first statement of every service's entry module (``services/<name>/__main__.py``), before its imports.

A service's imports take a second and more on a busy node (SQLAlchemy, pydantic, kafka-python, FastAPI...). Two
things must hold from before them:

- SIGUSR1 (stack dumps) is blocked on the main thread before any import starts a thread (numpy's OpenBLAS pool
  does), so every thread inherits the block (:mod:`shared.stack_dumps`);
- SIGTERM and SIGINT end the process at once with status 0 (:mod:`shared.shutdown`). Kubernetes sends SIGTERM to
  pods still starting; one that came during the imports, before start-up's own steps, ended the process with status
  143 (-15 in a test), read as a crash (a CI run saw the extractor so, stopped seconds after it was started);
- an exception that escapes (settings refused, the catalog or Kafka not reached, a bug; on the main thread or any
  other) is reported with the secrets the process was given masked, and credentials by their shape
  (:func:`shared.log.report_escaped`): Python's own report prints the exception's text as it is, and a driver's
  or a client's message may quote a password or a URL holding one.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType

from shared.shutdown import stop_on_signals
from shared.stack_dumps import reserve_stack_dump_signal


def _escaped(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    if not isinstance(error, Exception):  # KeyboardInterrupt and the like: Python's own report
        sys.__excepthook__(kind, error, trace)
        return
    from shared.log import report_escaped  # imported when needed: structlog is one of the imports this precedes

    report_escaped(error)


def _escaped_from_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or not isinstance(args.exc_value, Exception):
        threading.__excepthook__(args)
        return
    from shared.log import report_escaped

    report_escaped(args.exc_value, thread=args.thread.name if args.thread is not None else None)


def report_escaped_exceptions() -> None:
    """Have every exception that escapes this process's code, on any thread, reported masked
    (:func:`shared.log.report_escaped`) instead of by Python's hooks."""
    sys.excepthook = _escaped
    threading.excepthook = _escaped_from_thread


def begin_service_process() -> None:
    """Reserve the stack-dump signal and have SIGTERM and SIGINT end the process with status 0 until the service
    serves (its loop, or uvicorn, then takes them over to stop gracefully). Call it on the main thread, first thing
    in a service's entry module: every import after it is covered. Exceptions that escape are reported masked from
    then on (:func:`report_escaped_exceptions`)."""
    reserve_stack_dump_signal()
    stop_on_signals()
    report_escaped_exceptions()
