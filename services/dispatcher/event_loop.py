"""Which event loop the dispatcher's requests run on (``EXPORT_DISPATCHER_EVENT_LOOP``).

The requests run on one event loop on a thread of its own (anyio's blocking portal): uvloop's by default, where
a one-member request costs about 7% less of the dispatcher's CPU than on asyncio's own loop (README, Performance),
or asyncio's as a fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

EventLoopName = Literal["uvloop", "asyncio"]


def portal_options(event_loop: EventLoopName) -> dict[str, Any]:
    """anyio's asyncio-backend options for a blocking portal whose loop is ``event_loop``."""
    return {"use_uvloop": event_loop == "uvloop"}


def running_loop_name() -> str:
    """The running event loop's kind as logged at start: ``uvloop`` or ``asyncio``."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
