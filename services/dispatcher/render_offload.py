"""Render requests off the event loop when they may be slow, on it when they are known to be quick.

Rendering is CPU work (a 500-member batch of the demo template: about 7 ms; one member: about 0.06 ms),
and the dispatcher's requests share one asyncio event loop. Handing a render to a thread costs about
0.05-0.1 ms, more than a small render itself, so :class:`Renderer` keeps the last CPU cost of each
template's render and renders on the loop only when this batch is expected to take less than
:attr:`Renderer.INLINE_SECONDS`; anything else (a template not rendered yet included) goes to a small
thread pool, where a slow or runaway template (stopped by its CPU deadline) holds one render thread, not
every request in flight. Two threads: renders hold the GIL, so more would not be faster, and each
rendering may build up to its budget of text (``render_budget``). A quick template's cost is measured (two reads
of the thread's CPU clock, each a system call) once in :attr:`Renderer.MEASURE_EVERY` renders, and at every render
that takes a step (a loop iteration, a call, a filter), whose budget reads the clock anyway to start its deadline:
a one-member render without one reads no clock (README, Performance).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.render_budget import RenderBudget
from shared.domain.rendering import DEFAULT_LIMITS, PreparedRequest, RenderedRequest, RenderLimits, prepare_request
from shared.events import MemberBatch


class Renderer:
    """Renders a batch's request within ``limits``, on the loop or on a render thread (see the module)."""

    #: Renders expected to take less CPU than this stay on the event loop.
    INLINE_SECONDS = 0.001
    #: Templates whose cost is remembered (the oldest is forgotten first).
    MAX_TEMPLATES = 10_000
    #: A quick render that takes no step (no loop, call or filter) is measured once in this many renders of its
    #: template (:meth:`render_inline`).
    MEASURE_EVERY = 16

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, threads: int = 2) -> None:
        self.limits = limits
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="render")
        #: Per template name: the CPU seconds of its last render, and how many members that render had.
        self._costs: dict[str, tuple[float, int]] = {}
        self._costs_lock = threading.Lock()  # written by the render threads and the loop
        #: Per template: its quick renders on the loop since the last one measured (read and written on the loop).
        self._unmeasured: dict[str, int] = {}

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

    async def render(
        self, prepared: PreparedRequest, members: list[dict[str, Any]], headers: dict[str, str] | None = None
    ) -> RenderedRequest:
        """The request of ``members`` (a slice of the prepared batch's); TemplateRenderError (a PermanentError)
        when the template fails or is over a limit. ``headers``: the request's own, carried as they are
        (``PreparedRequest.render``)."""
        rendered = self.render_inline(prepared, members, headers)
        if rendered is not None:
            return rendered
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._render, prepared, members, headers)

    def render_inline(
        self, prepared: PreparedRequest, members: list[dict[str, Any]], headers: dict[str, str] | None = None
    ) -> RenderedRequest | None:
        """The request of ``members`` rendered here, on the loop, when it is expected to be quick; None when it goes
        to a render thread (await :meth:`render`). A caller rendering many quick requests (the dispatcher's) pays
        no coroutine a request.

        A quick render's cost is measured (two reads of the CPU clock, system calls) one render in
        :attr:`MEASURE_EVERY` of its template, and whenever the render took a step (a loop iteration, a call, a
        filter: its budget then read the clock to start its deadline); the others read no clock at all."""
        name = prepared.template.name
        known = self._costs.get(name)  # expected_seconds, without its call (a request's CPU)
        if known is None:
            return None
        seconds, measured = known
        if len(members) > measured:
            seconds *= len(members) / measured
        if seconds >= self.INLINE_SECONDS:
            return None
        unmeasured = self._unmeasured.get(name, 0) + 1
        if unmeasured >= self.MEASURE_EVERY:
            self._unmeasured[name] = 0
            return self._render(prepared, members, headers)
        self._unmeasured[name] = unmeasured
        budget = RenderBudget(self.limits)  # its deadline starts at the render's first step, if it takes one
        try:
            return prepared.render(members, budget, headers)
        finally:  # a failed render too: a template that ran into its deadline is not rendered on the loop again
            if budget.started is not None:
                self._remember(name, time.thread_time() - budget.started, len(members))

    def _render(
        self, prepared: PreparedRequest, members: list[dict[str, Any]], headers: dict[str, str] | None = None
    ) -> RenderedRequest:
        started = time.thread_time()
        try:  # the render's deadline counts from the same reading
            return prepared.render(members, RenderBudget(self.limits, started), headers)
        finally:  # a failed render too: a template that ran into its deadline is not rendered on the loop again
            self._remember(prepared.template.name, time.thread_time() - started, len(members))

    def _remember(self, name: str, seconds: float, members: int) -> None:
        """The CPU ``seconds`` a render of ``members`` members of template ``name`` took (its last render's)."""
        with self._costs_lock:
            self._costs.pop(name, None)
            self._costs[name] = (seconds, max(1, members))
            if len(self._costs) > self.MAX_TEMPLATES:
                forgotten = next(iter(self._costs))
                self._costs.pop(forgotten)
                self._unmeasured.pop(forgotten, None)

    def close(self) -> None:
        """Stop the render threads (those rendering finish first)."""
        self._threads.shutdown(wait=True)
