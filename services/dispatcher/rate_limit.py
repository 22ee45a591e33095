"""Per-profile rate limits: a token bucket whose rate backs off on 429 and recovers on success.

Pure arithmetic on an injected clock (``now`` in seconds); the caller sleeps the returned wait. Rate
adaptation is AIMD, as TCP does it: a throttled answer halves the current rate (not below a floor),
every success adds back a tenth of the configured rate, up to it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class AdaptiveRateLimiter:
    """At most ``max_rate`` requests per second (bursts of ``burst``), slowed down while the partner throttles."""

    max_rate: float
    burst: float = 1.0
    floor_share: float = 0.05
    rate: float = field(init=False)
    _tokens: float = field(init=False)
    _last: float | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.rate = self.max_rate
        self._tokens = self.burst

    def reserve(self, now: float) -> float:
        """Take one request's token; return how long to wait before sending it (0 when it may go now)."""
        with self._lock:
            if self._last is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            # A negative balance is a debt paid by waiting: later callers queue up behind it.
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def throttled(self) -> None:
        """The partner answered 429: halve the rate (multiplicative decrease)."""
        with self._lock:
            self.rate = max(self.max_rate * self.floor_share, self.rate / 2)

    def succeeded(self) -> None:
        """A request went through: recover a tenth of the configured rate (additive increase)."""
        with self._lock:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 10)
