"""The bounds of one request's rendering: a CPU-time deadline and byte caps. Pure.

A template is code an editor writes and a member's data feeds, run on the dispatcher's event loop and in
the admin API's dry runs. :class:`RenderBudget` is what the sandbox (``template_sandbox``) checks at each
loop iteration, call, operator, filter and output: the CPU time spent (``time.thread_time``, so a busy
machine does not fail a render that is merely waiting for a core), the text built along the way, and the
size any single operation would build before it builds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import SecurityError

#: Items a list or tuple built by a template may hold (the sandbox's own bound on ``range``).
MAX_ITEMS = 100_000
#: Bits of the largest integer a template may compute (about 30,000 digits).
MAX_INT_BITS = 100_000
#: The text built while rendering (intermediate strings included) may reach this many times the output cap.
BUILT_FACTOR = 8


@dataclass(frozen=True)
class RenderLimits:
    """How much rendering one request may take: CPU seconds, and the bytes of any one rendered part."""

    timeout_seconds: float = 1.0
    max_bytes: int = 5_000_000


DEFAULT_LIMITS = RenderLimits()


class RenderLimitExceeded(SecurityError):
    """A template went over a rendering bound; the message names the bound and its setting."""


class RenderBudget:
    """One request's rendering: the CPU deadline, and the text built so far.

    The deadline counts from ``started`` when the caller gives it (it read this thread's CPU clock just now), else
    from the rendering's first step (its first loop iteration, call, filter: :meth:`tick`), which reads the clock
    (``started`` is then that reading). A rendering that takes no step reads no clock at all: without a loop or a
    call, what a template can do is bounded by its own size and the byte caps, and most one-member renders take
    none (a system call a request less: README, Performance)."""

    __slots__ = ("_ticks", "built", "ceiling", "deadline", "limits", "started")

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, started: float | None = None) -> None:
        """``started``: this thread's CPU clock (``time.thread_time``) read by the caller just now, which the
        deadline counts from; None: the first step reads it."""
        self.limits = limits
        #: The CPU clock reading the deadline counts from (None until the first step when the caller gave none).
        self.started = started
        self.deadline = math.inf if started is None else started + limits.timeout_seconds
        self.built = 0
        self.ceiling = BUILT_FACTOR * limits.max_bytes
        self._ticks = 0 if started is not None else 15  # no reading yet: the first step reads the clock

    def tick(self) -> None:
        """Called at every step (a loop iteration, a call); looks at the CPU clock every 16th (and at the first
        when the clock was not read yet)."""
        self._ticks += 1
        if not self._ticks & 15:
            self.check_time()

    def check_time(self) -> None:
        """Refuse to go on past the CPU deadline (the first call, when the caller gave no start, starts it)."""
        now = time.thread_time()
        if now > self.deadline:
            raise RenderLimitExceeded(
                f"took longer than {self.limits.timeout_seconds:g} s of CPU time (EXPORT_RENDER_TIMEOUT_SECONDS)"
            )
        if self.started is None:
            self.started = now
            self.deadline = now + self.limits.timeout_seconds

    def allow(self, size: int, what: str) -> None:
        """Refuse, before it runs, an operation that would build ``size`` bytes (or items) of text."""
        if size > self.limits.max_bytes:
            raise RenderLimitExceeded(
                f"{what} would build {size} bytes, more than {self.limits.max_bytes} (EXPORT_RENDER_MAX_BYTES)"
            )

    def allow_items(self, count: int, what: str) -> None:
        """Refuse, before it runs, an operation that would build a sequence of ``count`` items."""
        if count > MAX_ITEMS:
            raise RenderLimitExceeded(f"{what} would build {count} items, more than {MAX_ITEMS}")

    def charge(self, value: Any) -> Any:
        """Account for ``value`` built by the template (text, or a sequence); returns it."""
        if isinstance(value, str | bytes | list | tuple):
            self.add(len(value))
        return value

    def add(self, size: int) -> None:
        """Account for ``size`` bytes of text built by the template."""
        self.built += size
        if self.built > self.ceiling:
            raise RenderLimitExceeded(
                f"built more than {self.ceiling} bytes of text while rendering "
                f"({BUILT_FACTOR} x EXPORT_RENDER_MAX_BYTES)"
            )

    def step(self, size: int) -> None:
        """One loop iteration that writes ``size`` bytes of literal text: :meth:`tick` and :meth:`add` at once."""
        self.built += size
        self._ticks += 1
        if self.built > self.ceiling or not self._ticks & 15:
            self.add(0)
            self.check_time()


_ACTIVE: ContextVar[RenderBudget | None] = ContextVar("render_budget", default=None)


def current_budget() -> RenderBudget:
    """The budget of the rendering under way; outside one (e.g. constant folding), a fresh default budget."""
    return _ACTIVE.get() or RenderBudget()


def enter_budget(budget: RenderBudget) -> Token[RenderBudget | None]:
    """Start rendering within ``budget`` (a fresh one, :class:`RenderBudget`); give the token to
    :func:`leave_budget` in a ``finally``. The plain pair exists for the dispatcher's per-request hot path, where
    :func:`rendering_within`'s generator costs a measurable share of a one-member render."""
    return _ACTIVE.set(budget)


def leave_budget(token: Token[RenderBudget | None]) -> None:
    """End what :func:`enter_budget` started: the budget before it is the current one again."""
    _ACTIVE.reset(token)


@contextmanager
def rendering_within(limits: RenderLimits) -> Iterator[RenderBudget]:
    """Render within ``limits``: on this thread's CPU clock, from the rendering's first step."""
    token = enter_budget(RenderBudget(limits))
    try:
        yield current_budget()
    finally:
        leave_budget(token)


def weight(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` would hold (strings by length, numbers by digits, one per
    other item), counted up to just past ``limit``: what turning a structure into text would build."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, dict):
            total += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2
            stack.extend(item)
        else:
            total += 24
    return total
