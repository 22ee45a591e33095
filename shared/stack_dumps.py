"""Every thread's stack on demand: ``kill -USR1 <pid>`` writes them to stderr, the process going on.

A service that hangs (a consumer that never joins its group, a lock never released) logs nothing that says
where it waits; its threads' stacks do. :mod:`faulthandler` writes them from a C signal handler, so they come
even while the main thread is blocked in C code or holds the GIL in a loop.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from typing import TextIO

#: The signal that asks for the stacks. No service uses SIGUSR1 otherwise; unregistered, it would end the process.
STACK_DUMP_SIGNAL = signal.SIGUSR1


def enable_stack_dumps(file: TextIO | None = None) -> None:
    """Write every thread's stack to ``file`` (stderr) when the process receives :data:`STACK_DUMP_SIGNAL`."""
    faulthandler.register(STACK_DUMP_SIGNAL, file=file or sys.stderr, all_threads=True, chain=False)
