"""Render requests off the event loop when they may be slow, on it when they are known to be quick.

Rendering is CPU work (a 500-member batch of the demo template: about 7 ms; one member: about 0.06 ms),
and the dispatcher's requests share one asyncio event loop. Handing a render to a thread costs about
0.05-0.1 ms, more than a small render itself, so :class:`Renderer` keeps the last CPU cost of each
template's render and renders on the loop only when this batch is expected to take less than
:attr:`Renderer.INLINE_SECONDS`; anything else (a template not rendered yet included) goes to a small
thread pool, where a slow or runaway template (stopped by its CPU deadline) holds one render thread, not
every request in flight. Two threads: renders hold the GIL, so more would not be faster, and each
rendering may build up to its budget of text (``render_budget``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import DEFAULT_LIMITS, PreparedRequest, RenderedRequest, RenderLimits, prepare_request
from shared.events import MemberBatch


class Renderer:
    """Renders a batch's request within ``limits``, on the loop or on a render thread (see the module)."""

    #: Renders expected to take less CPU than this stay on the event loop.
    INLINE_SECONDS = 0.001
    #: Templates whose cost is remembered (the oldest is forgotten first).
    MAX_TEMPLATES = 10_000

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, threads: int = 2) -> None:
        self.limits = limits
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="render")
        #: Per template name: the CPU seconds of its last render, and how many members that render had.
        self._costs: dict[str, tuple[float, int]] = {}
        self._costs_lock = threading.Lock()  # written by the render threads and the loop

    def expected_seconds(self, template: str, members: int) -> float | None:
        """The CPU a render of ``members`` members is expected to take (None: the template was never rendered).

        A smaller batch (a slice of a split) is expected to cost what the last render did, a larger one more.
        """
        known = self._costs.get(template)
        if known is None:
            return None
        seconds, measured = known
        return seconds * max(1.0, members / measured)

    def prepare(self, template: HttpTemplate, profile: ConnectionProfile, batch: MemberBatch) -> PreparedRequest:
        """What the requests of ``batch``'s slices share, done once a batch (``rendering.PreparedRequest``)."""
        return prepare_request(template, profile, batch, self.limits)

    async def render(self, prepared: PreparedRequest, members: list[dict[str, Any]]) -> RenderedRequest:
        """The request of ``members`` (a slice of the prepared batch's); TemplateRenderError (a PermanentError)
        when the template fails or is over a limit."""
        rendered = self.render_inline(prepared, members)
        if rendered is not None:
            return rendered
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._render, prepared, members)

    def render_inline(self, prepared: PreparedRequest, members: list[dict[str, Any]]) -> RenderedRequest | None:
        """The request of ``members`` rendered here, on the loop, when it is expected to be quick; None when it goes
        to a render thread (await :meth:`render`). A caller rendering many quick requests (the dispatcher's) pays
        no coroutine a request."""
        expected = self.expected_seconds(prepared.template.name, len(members))
        if expected is not None and expected < self.INLINE_SECONDS:
            return self._render(prepared, members)
        return None

    def _render(self, prepared: PreparedRequest, members: list[dict[str, Any]]) -> RenderedRequest:
        started = time.thread_time()
        try:  # the render's deadline counts from the same reading (a system call a request: README, Performance)
            return prepared.render(members, started)
        finally:  # a failed render too: a template that ran into its deadline is not rendered on the loop again
            cost = (time.thread_time() - started, max(1, len(members)))
            name = prepared.template.name
            with self._costs_lock:
                self._costs.pop(name, None)
                self._costs[name] = cost
                if len(self._costs) > self.MAX_TEMPLATES:
                    self._costs.pop(next(iter(self._costs)))

    def close(self) -> None:
        """Stop the render threads (those rendering finish first)."""
        self._threads.shutdown(wait=True)
