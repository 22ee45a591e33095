"""How long to wait before the next attempt: full-jitter exponential backoff, or longer when the server asks
(``Retry-After``), within a budget. Pure (the random draw is passed in or taken from :mod:`random`).

The dispatcher's ``RetryBudget.wait`` and the notifier's webhook retries both wait this long.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` (1-based) waits up to ``initial * 2**(n-1)``,
    never more than ``maximum``; a ``Retry-After`` is honoured up to ``retry_after_cap`` seconds."""

    initial: float = 0.5
    maximum: float = 30.0
    retry_after_cap: float = 120.0

    def delay(
        self,
        attempt_number: int,
        retry_after: float | None = None,
        draw: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """Seconds to wait after failed attempt ``attempt_number``."""
        ceiling = min(self.maximum, self.initial * 2 ** max(0, attempt_number - 1))
        delay = draw(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_cap))
        return delay

    def delay_after(self, elapsed: float, draw: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait after failures that have gone on for ``elapsed`` seconds, however many there were (those
        not counted as attempts: an outage's). Full jitter up to ``elapsed`` itself, kept between ``initial`` and
        ``maximum``: the waits grow over an outage as doubling attempts' would, and a blip soon after the first
        failure is tried again within ``initial``."""
        return draw(0, min(self.maximum, max(self.initial, elapsed)))
