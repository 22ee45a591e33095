"""Rounds in flight: a round handler's rounds overlapping, at most a bounded number at once.

With one round at a time, everything the consumer loop does around a round (poll, decode, produce the
outcomes and wait for their acknowledgements, commit) happens while the handler has nothing to do: the
dispatcher's HTTP connections idle through it. A :class:`RoundWindow` of ``size`` rounds runs the handler on
worker threads, so that the loop polls and decodes round N+1, and produces and commits round N, while the
handler works on the other. Rounds are taken back oldest first (:meth:`RoundWindow.pop`), whatever order they
finish in: their outcomes are produced, and their offsets committed, in the order they were polled.

The bound keeps backpressure: a slow handler fills the window, and the loop polls no more until the oldest
round is done, so memory holds at most ``size`` polls' records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class RoundWindow(Generic[R]):
    """At most ``size`` rounds handed to their handler and not taken back yet, oldest first."""

    def __init__(self, size: int, name: str = "rounds") -> None:
        if size < 1:
            raise ValueError("a round window holds one round at least")
        self.size = size
        self._rounds: deque[tuple[R, Future[Sequence[Any]]]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    def __len__(self) -> int:
        return len(self._rounds)

    def __iter__(self) -> Iterator[R]:
        """The rounds in flight, oldest first."""
        return (round_ for round_, _ in self._rounds)

    @property
    def full(self) -> bool:
        """Whether no round may start before the oldest is taken back."""
        return len(self._rounds) >= self.size

    def start(self, round_: R, handle: Callable[[], Sequence[Any]]) -> None:
        """Run ``handle`` (the round's handling: its results) on a worker thread; ``round_`` is its bookkeeping."""
        if self.full:
            raise RuntimeError("the round window is full: take the oldest round back first")
        self._rounds.append((round_, self._executor.submit(handle)))

    def oldest_done(self) -> bool:
        """Whether the oldest round in flight has its results (False when none is in flight)."""
        return bool(self._rounds) and self._rounds[0][1].done()

    def pop(self) -> tuple[R, Sequence[Any]]:
        """Take the oldest round back, once its handling is done: its bookkeeping and results. Raises what the
        handling raised (a round handler turns its failures into results: only a ``BaseException`` comes here)."""
        round_, results = self._rounds.popleft()
        return round_, results.result()

    def close(self) -> None:
        """Forget the rounds in flight (their records are not committed: read again by the partition's next owner)
        and let the worker threads end once their handling returns."""
        self._rounds.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
