"""A stop asked for at any time: SIGTERM or SIGINT from the first line of a service's start-up to its end.

Kubernetes sends SIGTERM whenever it wants a pod gone, start-up included (a rollout replacing a pod still
starting, a node drained, a pod whose Kafka is away). Unhandled, SIGTERM ends the process with status 143, which
reads as a crash. So a service asks for :func:`stop_on_signals` first thing, before its imports
(:func:`shared.process_start.begin_service_process`; :func:`shared.runtime.start_service` asks again):

- **during start-up** the signal ends the process at once with status 0, wherever start-up is (waiting for Kafka
  or the catalog included): its output flushed, then :func:`os._exit`. Nothing is in hand yet: no record polled,
  nothing to commit. Not by unwinding start-up (``SystemExit``): that waited, at interpreter exit, for threads
  start-up had begun (a CI run saw a dispatcher still there 30 s after the signal, then killed);
- **once the service serves** (its consumer loop's handlers, :meth:`shared.kafka.ConsumerLoop.install_signal_handlers`,
  or :func:`stop_gracefully`) the signal only sets the process's stop event, and the loop finishes what it has in
  hand, commits and stops (exit 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

#: The signals that ask a service to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop = threading.Event()


def stop_requested() -> threading.Event:
    """The process's stop event: set once SIGTERM or SIGINT arrived (after :func:`stop_on_signals`)."""
    return _stop


def stop_on_signals() -> threading.Event:
    """From now on (start-up) SIGTERM and SIGINT end the process with status 0 instead of 143; return the stop
    event. Call it from the main thread (Python's rule for signal handlers)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_starting)
    return _stop


def stop_gracefully() -> threading.Event:
    """From now on (the service serves) SIGTERM and SIGINT only set the stop event, returned: the service's loop
    stops at its next turn. Call it from the main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _request_stop)
    return _stop


def _stop_starting(signum: int, frame: object) -> None:
    _stop.set()
    for stream in (sys.stdout, sys.stderr):  # the log lines written so far
        with contextlib.suppress(Exception):  # interrupted in the middle of a write: what is buffered is lost
            stream.flush()
    os._exit(0)  # start-up holds nothing to finish


def _request_stop(signum: int, frame: object) -> None:
    _stop.set()
