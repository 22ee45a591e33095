"""The extractor's consumer rounds: run requests handled one after the other, those due later held back.

The extractor consumes as a round handler (``ConsumerLoop(handle_round=...)``) so that a scheduled run published
ahead of its instant can be held back (:class:`shared.kafka.held_records.HoldRecord`): kept in memory,
uncommitted, handed back when due, while the requests after it are handled. A round holds one request at most
besides a held one come due (``max_poll_records=1``); its requests are handled one by one, each in its own trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.events import RangeRequested, RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.kafka.loop import is_interruption
from shared.kafka.records import round_contexts
from shared.tracing import attached

Request = RunRequested | RangeRequested
Result = list[Outgoing] | BaseException


def request_rounds(
    handle: Callable[[Request], list[Outgoing]],
    hold: Callable[[Request], HoldRecord | None],
    stopping: Callable[[], bool],
) -> Callable[[Sequence[Request]], list[Result]]:
    """A round handler: each request held (``hold``), or handled (``handle``) in its record's trace context.

    A request whose handling meets an outage hands it and the rest of the round back (the loop polls them again
    after a pause), as the one-by-one loop does; once ``stopping``, the requests not begun are held, so that they
    are neither committed nor dead-lettered (the next owner of their partitions reads them again).
    """

    def handle_round(requests: Sequence[Request]) -> list[Result]:
        results: list[Result] = []
        for request, context in zip(requests, round_contexts(requests), strict=True):
            if results and isinstance(outage := results[-1], BaseException) and is_interruption(outage):
                results.append(outage)
                continue
            if stopping():
                results.append(HoldRecord("the extractor is stopping", until=0.0))
                continue
            held = hold(request)
            if held is not None:
                results.append(held)
                continue
            with attached(context):
                try:
                    results.append(handle(request))
                except Exception as exc:  # noqa: BLE001 - the loop dead-letters it, or hands it back on an outage
                    results.append(exc)
        return results

    return handle_round
