"""The bounds of one request's rendering: a CPU-time deadline and byte caps. Pure.

A template is code an editor writes and a member's data feeds, run on the dispatcher's event loop and in
the admin API's dry runs. :class:`RenderBudget` is what the sandbox (``template_sandbox``) checks at each
loop iteration, call, operator, filter and output: the CPU time spent (``time.thread_time``, so a busy
machine does not fail a render that is merely waiting for a core), the text built along the way, and the
size any single operation would build before it builds it.
"""

from __future__ import annotations

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
    """One request's rendering: the CPU deadline, and the text built so far."""

    __slots__ = ("_ticks", "built", "ceiling", "deadline", "limits")

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, started: float | None = None) -> None:
        """``started``: this thread's CPU clock (``time.thread_time``) read by the caller just now, which the
        deadline counts from (the dispatcher's renderer reads it for the render's cost anyway: one system call a
        request less); None reads it here."""
        self.limits = limits
        self.deadline = (time.thread_time() if started is None else started) + limits.timeout_seconds
        self.built = 0
        self.ceiling = BUILT_FACTOR * limits.max_bytes
        self._ticks = 0

    def tick(self) -> None:
        """Called at every step (a loop iteration, a call); looks at the CPU clock every 16th."""
        self._ticks += 1
        if not self._ticks & 15:
            self.check_time()

    def check_time(self) -> None:
        """Refuse to go on past the CPU deadline."""
        if time.thread_time() > self.deadline:
            raise RenderLimitExceeded(
                f"took longer than {self.limits.timeout_seconds:g} s of CPU time (EXPORT_RENDER_TIMEOUT_SECONDS)"
            )

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


def enter_budget(limits: RenderLimits, started: float | None = None) -> Token[RenderBudget | None]:
    """Start rendering within ``limits`` (a fresh budget, on this thread's CPU clock, counted from ``started`` when
    the caller has just read it: :class:`RenderBudget`); give the token to :func:`leave_budget` in a ``finally``.
    The plain pair exists for the dispatcher's per-request hot path, where :func:`rendering_within`'s generator
    costs a measurable share of a one-member render."""
    return _ACTIVE.set(RenderBudget(limits, started))


def leave_budget(token: Token[RenderBudget | None]) -> None:
    """End what :func:`enter_budget` started: the budget before it is the current one again."""
    _ACTIVE.reset(token)


@contextmanager
def rendering_within(limits: RenderLimits) -> Iterator[RenderBudget]:
    """Render within ``limits``: the budget starts now, on this thread's CPU clock."""
    token = enter_budget(limits)
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
