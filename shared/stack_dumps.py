"""Every thread's stack on demand: ``kill -USR1 <pid>`` logs them, one JSON line per thread, the process going on.

A service that hangs (a consumer that never joins its group, a lock never released) logs nothing that says
where it waits; its threads' stacks do.

The stacks are taken by a daemon thread of the service's own (``stack-dumps``), holding the GIL, from
:func:`sys._current_frames`: a consistent picture of every thread at one instant (a thread blocked in C code is
seen at its last Python frame), logged as a ``thread stack`` line per thread (its name, its ``frames``, most
recent call first, and the ``dump`` it belongs to) through the logging configured
(:func:`shared.log.configure_logging`), whatever the log level.

Why not :mod:`faulthandler`, which this module used before: its dump of all threads runs in the C signal handler,
without the GIL, and reads the other threads' frames while they change them. On Python 3.11 a process whose
threads start and end (a service starting up, a thread pool) is killed by a segmentation fault within about a
hundred signals (measured; CPython issue 116008): asking a service where it waits must never end it.

How the signal reaches the thread: :func:`enable_stack_dumps`, called on the main thread before the service
starts its other threads, blocks the signal there, so every thread started afterwards has it blocked too and
the kernel keeps it pending until ``stack-dumps`` takes it with :func:`signal.sigwait`. A thread started before
(none in the services; a library's) still has it unblocked: for it, the signal's Python handler passes the
request on to ``stack-dumps`` (:func:`signal.pthread_kill`). Either way the signal never ends the process. The
price: a thread that holds the GIL and never lets it go (a C extension's loop) delays the dump until it does.
"""

from __future__ import annotations

import contextvars
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType

import structlog

#: The signal that asks for the stacks. No service uses SIGUSR1 otherwise; unhandled, it would end the process.
STACK_DUMP_SIGNAL = signal.SIGUSR1
#: Bounds of one dump (a thread leak must not make the log line or the dump unbounded).
MAX_THREADS = 200
MAX_FRAMES = 100
_LOGGER = "shared.stack_dumps"
_log = structlog.get_logger(_LOGGER)
_enabled = threading.Lock()
_watcher: threading.Thread | None = None


@dataclass(frozen=True)
class ThreadStack:
    """One thread's part of a dump: its name, its identifier (``0x...``, as ``ps -L`` and debuggers show it) and
    its frames, most recent call first (``File "<path>", line <n> in <function>``)."""

    name: str
    thread_id: str
    frames: tuple[str, ...]


def thread_stacks(
    frames: dict[int, FrameType], names: dict[int, str], *, max_threads: int = MAX_THREADS, max_frames: int = MAX_FRAMES
) -> list[ThreadStack]:
    """The stacks of ``frames`` (:func:`sys._current_frames`), named by ``names`` (thread ident to name; a thread
    the :mod:`threading` module does not know is named ``""``), in ident order: at most ``max_threads`` threads of
    at most ``max_frames`` frames each, a cut stack ending with ``<N more frames>``."""
    stacks = []
    for ident in sorted(frames)[:max_threads]:
        lines: list[str] = []
        frame: FrameType | None = frames[ident]
        while frame is not None:
            if len(lines) == max_frames:
                lines.append(f"<{_depth(frame)} more frames>")
                break
            code = frame.f_code
            lines.append(f'File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}')
            frame = frame.f_back
        stacks.append(ThreadStack(names.get(ident, ""), f"0x{ident:016x}", tuple(lines)))
    return stacks


def _depth(frame: FrameType | None) -> int:
    depth = 0
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def enable_stack_dumps() -> None:
    """Log every thread's stack when the process receives :data:`STACK_DUMP_SIGNAL` (see the module). Call it on
    the main thread once logging is configured, before the service starts its threads; a second call changes
    nothing."""
    global _watcher
    with _enabled:
        if _watcher is not None:
            return
        # Its own level: the stacks are logged when asked for, whatever the service's log level.
        logging.getLogger(_LOGGER).setLevel(logging.INFO)
        # Blocked first, so that the watcher (started below) inherits the block, as every later thread does.
        signal.pthread_sigmask(signal.SIG_BLOCK, {STACK_DUMP_SIGNAL})
        # In a copy of this thread's context: its lines carry what the service bound (its name) as the others do.
        context = contextvars.copy_context()
        _watcher = threading.Thread(target=context.run, args=(_watch,), name="stack-dumps", daemon=True)
        _watcher.start()
        signal.signal(STACK_DUMP_SIGNAL, _pass_on)  # for a thread that has it unblocked (started before this)


def _pass_on(signum: int, frame: object) -> None:
    """The signal reached a thread that did not block it: hand the request to the watcher."""
    if _watcher is not None and _watcher.ident is not None:
        signal.pthread_kill(_watcher.ident, STACK_DUMP_SIGNAL)


def _watch() -> None:
    """Log every thread's stack each time the signal comes; forever."""
    dumps = 0
    while True:
        signal.sigwait({STACK_DUMP_SIGNAL})
        dumps += 1
        try:
            _log_dump(dumps)
        except Exception:  # noqa: BLE001 - a dump that cannot be logged must not end the watcher
            sys.stderr.write(f"stack dump {dumps} could not be logged\n")
            sys.stderr.flush()


def _log_dump(dump: int) -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate() if thread.ident is not None}
    stacks = thread_stacks(sys._current_frames(), names)
    for stack in stacks:
        _log.info(
            "thread stack",
            dump=dump,
            threads=len(stacks),
            thread=stack.name,
            thread_id=stack.thread_id,
            frames=list(stack.frames),
        )
