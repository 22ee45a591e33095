"""exportctl and Python's cyclic garbage collector: off while a command starts, on again when it waits.

A command's start-up creates a few hundred thousand objects (modules, classes, models, the SQL and Kafka
clients) that live as long as the process; the collector found nothing to free among them, but traversed them
at every collection: about 110 ms of the CPU of ``exportctl run`` on the catalog. A command is short, and the
garbage it leaves uncollected is too; one that waits (following a run) turns the collector back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block (a command), and as it was after (an in-process caller's is kept)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def resume() -> None:
    """The collector on for what follows (a long wait), the objects made so far left out of its collections
    (frozen: what start-up made lives to the end)."""
    gc.freeze()
    gc.enable()
