"""Isolate the members a partner rejects: split a refused batch in halves until the refusals are single.

Pure apart from ``send``, which is given a slice of the batch and says how its delivery went. A partner that refuses a
whole batch of 500 because of one malformed member would otherwise cost the 499 others their delivery.

Only content-like refusals are split (400, 413, 422): an authentication, routing or method error
(401, 403, 404, 405...) would fail every half the same way. Splitting is bounded by a budget of
extra requests per batch; slices still refused when it runs out are reported as they are, so every
member is accounted for exactly once either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

SPLITTABLE_STATUSES = frozenset({400, 413, 422})


class Outcome(Protocol):
    @property
    def success(self) -> bool: ...

    @property
    def status(self) -> int | None: ...


R = TypeVar("R", bound=Outcome)


@dataclass(frozen=True)
class Slice:
    """Members ``start`` (inclusive) to ``stop`` (exclusive) of a batch."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Refused(Generic[R]):
    """A slice the partner refused for good, with the outcome of its last delivery."""

    slice: Slice
    outcome: R


@dataclass(frozen=True)
class IsolationResult(Generic[R]):
    """What became of every member: delivered slices' size, refused slices, and requests used."""

    delivered: int
    refused: list[Refused[R]]
    requests: int
    first: R


def is_splittable(outcome: Outcome) -> bool:
    """A refusal that may be caused by some members only."""
    return not outcome.success and outcome.status in SPLITTABLE_STATUSES


async def deliver_isolating(
    size: int, send: Callable[[Slice], Awaitable[R]], *, split_budget: int
) -> IsolationResult[R]:
    """Deliver members ``0..size``; on a splittable refusal, halve (depth first, in order) to isolate it.

    At most ``1 + split_budget`` calls of ``send``.
    """
    whole = Slice(0, size)
    first = await send(whole)
    requests = 1
    delivered = size if first.success else 0
    refused: list[Refused[R]] = []
    pending: list[tuple[Slice, R]] = [] if first.success else [(whole, first)]
    while pending:
        part, outcome = pending.pop()
        if part.size == 1 or not is_splittable(outcome) or requests + 2 > 1 + split_budget:
            refused.append(Refused(part, outcome))
            continue
        middle = part.start + part.size // 2
        halves = [Slice(part.start, middle), Slice(middle, part.stop)]
        results = []
        for half in halves:
            result = await send(half)
            requests += 1
            if result.success:
                delivered += half.size
            else:
                results.append((half, result))
        pending.extend(reversed(results))  # pop() takes the left half first: members stay in order
    refused.sort(key=lambda r: r.slice.start)
    return IsolationResult(delivered=delivered, refused=refused, requests=requests, first=first)
