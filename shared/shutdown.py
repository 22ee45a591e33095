"""A stop asked for at any time: SIGTERM or SIGINT from the first line of a service's start-up to its end.

Kubernetes sends SIGTERM whenever it wants a pod gone, start-up included (a rollout replacing a pod still
starting, a node drained). Unhandled, SIGTERM ends the process at once with status 143, its clients closed by
nobody, which reads as a crash. So a service asks for :func:`stop_on_signals` first thing: from then on the
signal only sets the process's stop event, start-up goes on, and the service's loop, seeing it set, stops
before its first round and closes what it opened (exit 0). Start-up steps that wait long (Kafka away) may look
at :func:`stop_requested` to give up early.
"""

from __future__ import annotations

import signal
import threading

#: The signals that ask a service to stop gracefully.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop = threading.Event()


def stop_requested() -> threading.Event:
    """The process's stop event: set once SIGTERM or SIGINT arrived (after :func:`stop_on_signals`)."""
    return _stop


def stop_on_signals() -> threading.Event:
    """From now on SIGTERM and SIGINT set :func:`stop_requested` instead of ending the process; return it.

    Call it from the main thread (Python's rule for signal handlers); calling it again changes nothing."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _request_stop)
    return _stop


def _request_stop(signum: int, frame: object) -> None:
    _stop.set()
