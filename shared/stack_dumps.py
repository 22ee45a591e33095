"""Every thread's stack on demand: ``kill -USR1 <pid>`` logs them, one JSON line per thread, the process going on.

A service that hangs (a consumer that never joins its group, a lock never released) logs nothing that says
where it waits; its threads' stacks do. :mod:`faulthandler` writes them from a C signal handler, so they are
taken even while the main thread is blocked in C code or holds the GIL in a loop.

faulthandler writes plain text, which among the services' JSON lines breaks ``kubectl logs | jq``. So it writes
into an anonymous in-memory file instead, and a daemon thread (``stack-dumps``) that looks at that file a few
times a second logs what it finds: a ``thread stack`` line per thread (its name, its ``frames`` as faulthandler
wrote them, most recent call first, and the ``dump`` it belongs to), through the logging configured
(:func:`shared.log.configure_logging`), whatever the log level. The price: those lines need that thread to run,
so a process in which one thread holds the GIL and never lets it go (stuck in a C extension's loop) takes its
stacks but logs them only when the GIL is released; and a process killed within a fraction of a second of the
signal never logs them. Where no such file can be made, faulthandler writes to stderr, as plain text, as before.
"""

from __future__ import annotations

import contextvars
import faulthandler
import fcntl
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass

import structlog

#: The signal that asks for the stacks. No service uses SIGUSR1 otherwise; unregistered, it would end the process.
STACK_DUMP_SIGNAL = signal.SIGUSR1
#: How often the watcher looks for a dump, and how long a dump's size must hold still before it is read
#: (faulthandler writes it in many small writes, from a signal handler that does not wait for the GIL).
POLL_SECONDS = 0.25
SETTLE_SECONDS = 0.05
#: The most of a dump read at once: faulthandler writes at most 100 threads of 100 frames each, far less.
_MAX_DUMP_BYTES = 4 * 1024 * 1024
_HEADER = re.compile(r"(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):")
_LOGGER = "shared.stack_dumps"
_log = structlog.get_logger(_LOGGER)
_enabled = threading.Lock()
_watcher: threading.Thread | None = None


@dataclass(frozen=True)
class ThreadStack:
    """One thread's part of a dump: its identifier as faulthandler wrote it (``0x...``; empty for lines before any
    thread's header) and its frames, most recent call first."""

    thread_id: str
    frames: tuple[str, ...]


def thread_stacks(text: str) -> list[ThreadStack]:
    """The threads of a faulthandler dump (``all_threads=True``), in its order; a line that is no thread's header
    belongs to the thread above it (``<no Python frame>`` and ``<truncated rest of calls>`` too)."""
    stacks: list[ThreadStack] = []
    thread_id, frames = "", list[str]()
    for line in text.splitlines():
        header = _HEADER.fullmatch(line.strip())
        if header:
            if thread_id or frames:
                stacks.append(ThreadStack(thread_id, tuple(frames)))
            thread_id, frames = header[1], []
        elif line.strip():
            frames.append(line.strip())
    if thread_id or frames:
        stacks.append(ThreadStack(thread_id, tuple(frames)))
    return stacks


def enable_stack_dumps() -> None:
    """Log every thread's stack when the process receives :data:`STACK_DUMP_SIGNAL` (see the module). Call it
    once logging is configured; a second call changes nothing."""
    global _watcher
    with _enabled:
        if _watcher is not None:
            return
        try:
            fd = _memory_file()
        except OSError:  # no memfd, and no temporary directory to write in: plain text on stderr, as before
            faulthandler.register(STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
            return
        # Its own level: the stacks are logged when asked for, whatever the service's log level.
        logging.getLogger(_LOGGER).setLevel(logging.INFO)
        faulthandler.register(STACK_DUMP_SIGNAL, file=fd, all_threads=True, chain=False)
        # In a copy of this thread's context: its lines carry what the service bound (its name) as the others do.
        context = contextvars.copy_context()
        _watcher = threading.Thread(target=context.run, args=(_watch, fd), name="stack-dumps", daemon=True)
        _watcher.start()


def _memory_file() -> int:
    """A file descriptor faulthandler can write to that takes no disk (``readOnlyRootFilesystem``): an anonymous
    memory file, or an unlinked temporary file where there is none; opened to append, so that it can be emptied
    under faulthandler's writes."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stack-dumps", os.MFD_CLOEXEC)
    else:  # not Linux: the file is unlinked at once (POSIX), the duplicate keeps it open
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _watch(fd: int) -> None:
    """Log each dump faulthandler writes to ``fd`` (see the module), then empty it; forever."""
    wake = threading.Event()  # never set: a wait that is a pause
    dumps = 0
    while True:
        wake.wait(POLL_SECONDS)
        size = os.fstat(fd).st_size
        if not size:
            continue
        while True:  # until faulthandler is done writing
            wake.wait(SETTLE_SECONDS)
            now = os.fstat(fd).st_size
            if now == size:
                break
            size = now
        text = os.pread(fd, min(size, _MAX_DUMP_BYTES), 0).decode("utf-8", errors="replace")
        os.ftruncate(fd, 0)
        dumps += 1
        try:
            _log_dump(text, dumps)
        except Exception:  # noqa: BLE001 - the stacks must come out somehow: as faulthandler wrote them
            sys.stderr.write(text)
            sys.stderr.flush()


def _log_dump(text: str, dump: int) -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    stacks = thread_stacks(text)
    for stack in stacks:
        _log.info(
            "thread stack",
            dump=dump,
            threads=len(stacks),
            thread=names.get(int(stack.thread_id, 16), "") if stack.thread_id else "",
            thread_id=stack.thread_id,
            frames=list(stack.frames),
        )
