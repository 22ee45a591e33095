"""Per-profile rate limits: a token bucket whose rate backs off on 429 and recovers on success.

Pure arithmetic on an injected clock (``now`` in seconds); the caller sleeps the returned wait. Used from
the dispatcher's one event loop, so without locks. A request that must wait is promised a later token
(:meth:`AdaptiveRateLimiter.reserve`: the promises queue up) but takes its token only when it is about to be sent
(:meth:`AdaptiveRateLimiter.redeem`): one back late (its worker busy) is not sent together with the others due
meanwhile. Rate
adaptation is AIMD, as TCP does it: a throttled answer halves the current rate (not below a floor),
every success adds back a tenth of the configured rate, up to it.

A profile without a configured rate gets a :class:`LearnedRateLimit`: no limit until the partner
answers 429, then AIMD from the rate it was being sent, and no limit again once it has taken that rate
for a while without complaint.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: A token due within this is there (seconds: the rounding of the clock's arithmetic, a timer fired a little early),
#: rather than the request waiting behind every promise made meanwhile for a millionth of a token.
EARLY_SECONDS = 1e-6


@dataclass
class AdaptiveRateLimiter:
    """At most ``max_rate`` requests per second (bursts of ``burst``), slowed down while the partner throttles."""

    max_rate: float
    burst: float = 1.0
    floor_share: float = 0.05
    rate: float = field(init=False)
    #: The tokens promised (a negative balance: a debt paid by waiting, later callers queue up behind it).
    _tokens: float = field(init=False)
    #: The tokens of the requests actually sent (never more than ``_tokens``' ahead: see :meth:`redeem`).
    _sent: float = field(init=False)
    _last: float | None = field(init=False, default=None)
    #: The limiter this one was rebuilt as (:meth:`resized`), which holds its promises now: a request waiting for a
    #: token promised here takes it from there (:func:`holds_promises_of`).
    resized_to: AdaptiveRateLimiter | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rate = self.max_rate
        self._tokens = self._sent = self.burst

    def _refill(self, now: float) -> None:
        if self._last is not None:
            gained = (now - self._last) * self.rate
            self._tokens = min(self.burst, self._tokens + gained)
            self._sent = min(self.burst, self._sent + gained)
        self._last = now

    def reserve(self, now: float) -> float:
        """Take one request's token; return how long to wait before sending it (0 when it may go now: the token is
        taken). A request told to wait holds a promise: once its wait is over it takes its token with
        :meth:`redeem`, or gives the promise back (:meth:`give_back`)."""
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0:
            self._sent -= 1.0  # never below 0: the promises are never ahead of what was sent
            return 0.0
        return -self._tokens / self.rate

    def redeem(self, now: float) -> float:
        """The token of a request back from the wait :meth:`reserve` (or this) told it, about to be sent: 0 when a
        token is there (taken), else how long it waits again (a new promise, after those made meanwhile). Taking it
        now, not when it was promised, is what spaces requests that come back together (their workers were busy)."""
        self._refill(now)
        if self._sent + EARLY_SECONDS * self.rate >= 1.0:
            self._sent -= 1.0
            self._tokens = min(self._tokens, self._sent)  # nothing promised before what was actually sent
            return 0.0
        self._tokens -= 1.0  # below 0: promises are never ahead of what was sent, and there is no token to send
        return -self._tokens / self.rate

    def give_back(self) -> None:
        """Return the token of a request :meth:`reserve` made wait that is not sent after all."""
        self._tokens = min(self.burst, self._sent, self._tokens + 1.0)

    def refund(self) -> None:
        """Return the token of a request that took it (:meth:`reserve` or :meth:`redeem` answered 0) and was not sent
        after all (its body failed to render): as if it had never asked."""
        self._sent = min(self.burst, self._sent + 1.0)
        self._tokens = min(self._sent, self._tokens + 1.0)

    def resized(self, max_rate: float, burst: float) -> AdaptiveRateLimiter:
        """This limiter at another rate and burst (a new share, an edited limit), keeping its state: the tokens
        spent (a new limiter would start with a full burst: sent at once on top of what just went) and how far
        it has slowed down for the partner's 429s."""
        resized = AdaptiveRateLimiter(max_rate, burst, self.floor_share)
        resized.rate = max(max_rate * self.floor_share, max_rate * self.rate / self.max_rate)
        resized._tokens, resized._sent = min(burst, self._tokens), min(burst, self._sent)
        resized._last = self._last
        self.resized_to = resized
        return resized

    def throttled(self) -> None:
        """The partner answered 429: halve the rate (multiplicative decrease)."""
        self.rate = max(self.max_rate * self.floor_share, self.rate / 2)

    def succeeded(self) -> None:
        """A request went through: recover a tenth of the configured rate (additive increase)."""
        self.rate = min(self.max_rate, self.rate + self.max_rate / 10)


@dataclass
class LearnedRateLimit:
    """For a profile without a configured rate: unlimited until a 429, then AIMD from the rate observed then.

    The observed rate is the requests sent in the last ``window`` seconds, at least ``minimum`` (a 429 on
    the first request of a quiet profile must not learn a crawl). Once the limiter is back at that rate
    and ``release_after`` more requests in a row succeed, the limit is dropped: the 429 was a moment, and
    the partner may well take more than it did then.
    """

    window: float = 2.0
    release_after: int = 100
    minimum: float = 10.0
    limiter: AdaptiveRateLimiter | None = field(init=False, default=None)
    _sent: deque[float] = field(init=False, default_factory=deque, repr=False)
    _clean: int = field(init=False, default=0)

    @property
    def rate(self) -> float | None:
        """The current rate, or None while there is no limit."""
        return self.limiter.rate if self.limiter is not None else None

    def reserve(self, now: float) -> float:
        """Record a request sent at ``now``; how long it must wait first (0 while unlimited)."""
        self._sent.append(now)
        while self._sent and self._sent[0] < now - self.window:
            self._sent.popleft()
        return self.limiter.reserve(now) if self.limiter is not None else 0.0

    def redeem(self, now: float) -> float:
        """:meth:`AdaptiveRateLimiter.redeem` (0 once the limit is dropped)."""
        return self.limiter.redeem(now) if self.limiter is not None else 0.0

    def give_back(self) -> None:
        """Forget the last request :meth:`reserve` recorded: it is not sent after all."""
        if self._sent:
            self._sent.pop()
        if self.limiter is not None:
            self.limiter.give_back()

    def refund(self) -> None:
        """:meth:`AdaptiveRateLimiter.refund`, and the request forgotten (:meth:`give_back`)."""
        if self._sent:
            self._sent.pop()
        if self.limiter is not None:
            self.limiter.refund()

    def throttled(self) -> None:
        """A 429: start limiting at the observed rate, halved; or halve the current rate."""
        if self.limiter is None:
            self.limiter = AdaptiveRateLimiter(max_rate=max(self.minimum, len(self._sent) / self.window))
        self.limiter.throttled()
        self._clean = 0

    def succeeded(self) -> None:
        """A success: recover toward the observed rate; drop the limit after enough at it."""
        if self.limiter is None:
            return
        self.limiter.succeeded()
        if self.limiter.rate >= self.limiter.max_rate:
            self._clean += 1
            if self._clean >= self.release_after:
                self.limiter = None
                self._clean = 0


def holds_promises_of(
    current: AdaptiveRateLimiter | LearnedRateLimit, earlier: AdaptiveRateLimiter | LearnedRateLimit
) -> bool:
    """Whether ``current`` (a profile's limiter now) is ``earlier`` or ``earlier`` rebuilt (:meth:`~AdaptiveRateLimiter.
    resized`, once or more: an edited limit, a new fleet share), so that it holds the tokens promised by ``earlier``:
    a request promised one there redeems it here; else (a limiter made afresh) it asks ``current`` anew."""
    step: AdaptiveRateLimiter | LearnedRateLimit | None = earlier
    while step is not None:
        if step is current:
            return True
        step = step.resized_to if isinstance(step, AdaptiveRateLimiter) else None
    return False
