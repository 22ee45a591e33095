"""exportctl and Python's cyclic garbage collector: off while a command starts, on again when it waits.

A command's start-up creates a few hundred thousand objects (modules, classes, models, the SQL and Kafka
clients) that live as long as the process; the collector found nothing to free among them, but traversed them
at every collection: about 110 ms of the CPU of ``exportctl run`` on the catalog. A command is short, and the
garbage it leaves uncollected is too; one that waits (following a run) turns the collector back on.

When the command is the process (``exportctl``, ``python -m shared.cli``), what it made is left out of the
collector's reach before the collector is turned back on: otherwise the first allocation after the command
collected all of it as young objects, and the interpreter's own collections at exit traversed it three times
more, about 220 ms of ``exportctl run``'s 1 s (measured with ``gc.DEBUG_STATS``), for nothing a process about to
end needs freed. Everything a command opens (catalog, Kafka producer, files) is closed by the command itself.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused(*, process_ends: bool = False) -> Iterator[None]:
    """The collector off for the block (a command), and as it was after (an in-process caller's is kept).

    ``process_ends``: the process ends after the block, so the objects it made are frozen (:func:`gc.freeze`)
    before the collector is back on, neither collected young nor traversed by the interpreter's exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if process_ends:
            gc.freeze()
        if was_enabled:
            gc.enable()


def resume() -> None:
    """The collector on for what follows (a long wait), the objects made so far left out of its collections
    (frozen: what start-up made lives to the end)."""
    gc.freeze()
    gc.enable()
