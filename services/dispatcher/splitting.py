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
from typing import Any, Generic, Protocol, TypeVar

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


async def deliver_in_requests(
    size: int,
    request_size: int,
    send: Callable[[Slice], Awaitable[R]],
    *,
    split_budget: int,
    gather: Callable[..., Awaitable[list[Any]]],
) -> IsolationResult[R]:
    """Deliver members ``0..size`` as requests of ``request_size`` members, all at once, each isolating its
    refused members (:func:`deliver_isolating`, ``split_budget`` extra requests each), as one result.

    A record may carry many requests (a one-member template's record holds dozens of members): they are
    started together, and ``gather`` (e.g. ``asyncio.gather``; given, so this stays free of an event loop) may bound
    how many are in flight: a single request is gathered too. The merged result's ``first`` is the first request's.
    """
    parts = [Slice(start, min(start + request_size, size)) for start in range(0, size, request_size)]
    if len(parts) <= 1:  # gathered too: ``gather`` may be what bounds the requests in flight
        whole: IsolationResult[R]
        (whole,) = await gather(deliver_isolating(size, send, split_budget=split_budget))
        return whole
    if request_size == 1:
        # One member a request: a refused request cannot be split, so each is sent once as its own slice and
        # refused whole, what :func:`deliver_isolating` does with one member, without its coroutine, slices and
        # result a request (README, "The one-member path").
        outcomes: list[R] = await gather(*(send(part) for part in parts))
        return IsolationResult(
            delivered=sum(1 for outcome in outcomes if outcome.success),
            refused=[
                Refused(part, outcome) for part, outcome in zip(parts, outcomes, strict=True) if not outcome.success
            ],
            requests=len(parts),
            first=outcomes[0],
        )

    def shifted(part: Slice) -> Callable[[Slice], Awaitable[R]]:
        return lambda piece: send(Slice(part.start + piece.start, part.start + piece.stop))

    results: list[IsolationResult[R]] = await gather(
        *(deliver_isolating(part.size, shifted(part), split_budget=split_budget) for part in parts)
    )
    refused = [
        Refused(Slice(part.start + r.slice.start, part.start + r.slice.stop), r.outcome)
        for part, result in zip(parts, results, strict=True)
        for r in result.refused
    ]
    return IsolationResult(
        delivered=sum(result.delivered for result in results),
        refused=refused,
        requests=sum(result.requests for result in results),
        first=results[0].first,
    )
