"""Rounds in flight: a round handler's rounds overlapping, at most a bounded number at once.

With one round at a time, everything the consumer loop does around a round (poll, decode, produce the
outcomes and wait for their acknowledgements, commit) happens while the handler has nothing to do: the
dispatcher's HTTP connections idle through it, and through every broker round trip. A :class:`RoundWindow`
of ``size`` rounds runs the handler on worker threads, so that the loop polls and decodes the next round, and
produces and commits the last, while the handler works on the others. A round stays in the window, counted in
its bound, from its poll until its offsets are committed; the loop takes rounds back oldest first, so their
outcomes are produced, and their offsets committed, in the order they were polled.

The bound keeps backpressure: a slow handler (or a slow broker) fills the window, and the loop polls no more
until the oldest round is committed, so memory holds at most ``size`` polls' records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class RoundWindow(Generic[R]):
    """At most ``size`` rounds polled and not committed yet, oldest first; their handler runs on worker threads."""

    def __init__(self, size: int, name: str = "rounds") -> None:
        if size < 1:
            raise ValueError("a round window holds one round at least")
        self.size = size
        self._rounds: deque[R] = deque()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    def __len__(self) -> int:
        return len(self._rounds)

    def __iter__(self) -> Iterator[R]:
        """The rounds in the window, oldest first."""
        return iter(list(self._rounds))

    @property
    def full(self) -> bool:
        """Whether no round may start before the oldest is taken back."""
        return len(self._rounds) >= self.size

    def start(self, round_: R, handle: Callable[[], Sequence[Any]]) -> Future[Sequence[Any]]:
        """Add ``round_`` (its bookkeeping) and run ``handle`` (its handling) on a worker thread; the future of its
        results."""
        if self.full:
            raise RuntimeError("the round window is full: take the oldest round back first")
        self._rounds.append(round_)
        return self._executor.submit(handle)

    def oldest(self) -> R | None:
        """The oldest round in the window (None when empty)."""
        return self._rounds[0] if self._rounds else None

    def pop(self) -> R:
        """Take the oldest round out of the window (committed, or handed back)."""
        return self._rounds.popleft()

    def close(self) -> None:
        """Forget the rounds in the window (their records are not committed: read again by the partition's next
        owner) and let the worker threads end once their handling returns."""
        self._rounds.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
