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

How the signal reaches the thread: a service reserves it first thing, before its imports
(:func:`reserve_stack_dump_signal`, by :func:`shared.process_start.begin_service_process` at the top of each
``services/<name>/__main__.py``): blocked on the main thread, so every thread started afterwards (numpy's OpenBLAS
pool starts at import, kafka-python's network threads, the dispatcher's event loop) has it blocked too, and the
kernel keeps it pending until ``stack-dumps`` takes it with :func:`signal.sigwait`, whatever the other threads are
doing. A thread started before (none in the services; a test's) still has it unblocked: for it, the signal's Python
handler passes the request on to ``stack-dumps`` (:func:`signal.pthread_kill`), as soon as the main thread runs
Python code. Either way the signal never ends the process. A child process would inherit the block (none is
started). Signals that come while a dump is logged are one dump. The price: a thread that holds the GIL and never
lets it go (a C extension's loop) delays the dump until it does."""

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
    """One thread's part of a dump: its name, its identifiers (``thread_id``, Python's ``0x...``; ``native_id``, the
    kernel's, as ``ps -L`` and ``top -H`` show it, or None) and its frames, most recent call first
    (``File "<path>", line <n> in <function>``)."""

    name: str
    thread_id: str
    native_id: int | None
    frames: tuple[str, ...]


def thread_stacks(
    frames: dict[int, FrameType],
    threads: dict[int, threading.Thread],
    *,
    max_threads: int = MAX_THREADS,
    max_frames: int = MAX_FRAMES,
) -> list[ThreadStack]:
    """The stacks of ``frames`` (:func:`sys._current_frames`), named by ``threads`` (by ident; a thread the
    :mod:`threading` module does not know is named ``""``): the main thread first, then the named ones, then the
    others (``Thread-N``, unknown), so that a thread leak cannot hide the service's own threads; at most
    ``max_threads`` threads of at most ``max_frames`` frames each, a cut stack ending with ``<N more frames>``."""

    def rank(ident: int) -> tuple[int, int]:
        thread = threads.get(ident)
        if thread is threading.main_thread():
            return 0, ident
        if thread is not None and not thread.name.startswith("Thread-"):
            return 1, ident
        return 2, ident

    stacks = []
    for ident in sorted(frames, key=rank)[:max_threads]:
        lines: list[str] = []
        frame: FrameType | None = frames[ident]
        while frame is not None:
            if len(lines) == max_frames:
                lines.append(f"<{_depth(frame)} more frames>")
                break
            code = frame.f_code
            lines.append(f'File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}')
            frame = frame.f_back
        thread = threads.get(ident)
        name = thread.name if thread is not None else ""
        native_id = thread.native_id if thread is not None else None
        stacks.append(ThreadStack(name, f"0x{ident:016x}", native_id, tuple(lines)))
    return stacks


def _depth(frame: FrameType | None) -> int:
    depth = 0
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def reserve_stack_dump_signal() -> None:
    """Keep :data:`STACK_DUMP_SIGNAL` for the ``stack-dumps`` thread: handled (never the end of the process) and
    blocked on the calling thread, the main one, so that every thread started afterwards has it blocked too. Call it
    before anything starts a thread (a service's first statement); :func:`enable_stack_dumps` calls it too."""
    _require_main_thread()
    signal.signal(STACK_DUMP_SIGNAL, _pass_on)  # first: a thread that has it unblocked passes it on
    signal.pthread_sigmask(signal.SIG_BLOCK, {STACK_DUMP_SIGNAL})


def enable_stack_dumps() -> None:
    """Log every thread's stack when the process receives :data:`STACK_DUMP_SIGNAL` (see the module). Call it on
    the main thread once logging is configured; a second call changes nothing. Raises :class:`RuntimeError` on
    another thread (Python handles signals on the main thread only), having changed nothing."""
    global _watcher
    _require_main_thread()
    with _enabled:
        if _watcher is not None:
            return
        # Its own level: the stacks are logged when asked for, whatever the service's log level.
        logging.getLogger(_LOGGER).setLevel(logging.INFO)
        reserve_stack_dump_signal()  # before the watcher starts: it inherits the block, as every later thread does
        # In a copy of this thread's context: its lines carry what the service bound (its name) as the others do.
        context = contextvars.copy_context()
        _watcher = threading.Thread(target=context.run, args=(_watch,), name="stack-dumps", daemon=True)
        _watcher.start()


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the stack dumps are enabled from the main thread (where Python handles signals)")


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
    frames = sys._current_frames()
    threads = {thread.ident: thread for thread in threading.enumerate() if thread.ident is not None}
    stacks = thread_stacks(frames, threads)
    for stack in stacks:
        _log.info(
            "thread stack",
            dump=dump,
            threads=len(stacks),
            threads_total=len(frames),
            thread=stack.name,
            thread_id=stack.thread_id,
            native_id=stack.native_id,
            frames=list(stack.frames),
        )
