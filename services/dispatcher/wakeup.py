"""Wake the coroutines waiting for something to change, on one event loop."""

from __future__ import annotations

import asyncio
from contextlib import suppress


class Wakeup:
    """What waiters wait on: :meth:`notify` wakes those waiting now; a later :meth:`wait` waits afresh."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return at the next :meth:`notify`, or after ``timeout`` seconds (the caller looks again either way)."""
        event = self._event
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # the next waiters wait for the next change
