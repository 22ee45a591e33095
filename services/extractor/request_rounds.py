"""The extractor's consumer rounds: run requests handled one after the other, those due later held back.

The extractor consumes as a round handler (``ConsumerLoop(handle_round=...)``) so that a scheduled run published
ahead of its instant can be held back (:class:`shared.kafka.held_records.HoldRecord`): kept in memory,
uncommitted, handed back when due, while the requests after it are handled. Its requests are handled one by one,
each in its own trace.

A round takes up to ``EXPORT_EXTRACTOR_START_ROUND`` requests (a burst of small runs then pays one poll and one
offset commit a round, not a run). So that one long run does not hold up what the runs before it produced, each
request's records are published (and acknowledged) as soon as it is handled (``publish``), not at the round's end;
and once a round has taken ``round_seconds``, the requests it has not begun are handed back to the next round
(held until now), so a round lasts at most that long plus one run, as a round of one did: the poll interval stays
safe, and the offsets of the runs done are committed no later than that.

The service also has a round start its due requests together before handling them (``start``: see
:mod:`services.extractor.bulk_starts`), and hands it every held request due (``EXPORT_EXTRACTOR_START_BATCH``, the
consumer loop's ``held_round_records``), not a round's worth: a burst due at one instant is started in a round or
two, its extraction going on over the rounds after (the requests handed back come first in the next round, and
are not started again). The requests a round holds are given to ``prepare`` at the round's end, once its requests
are handled (a read ahead never takes the time of those due now): the extractor reads and validates their
definitions then, ahead of their instant, so that their start at the instant only reads them again (see
``BulkStarts.prepare``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from shared.events import RangeRequested, RunRequested
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.kafka.loop import is_interruption
from shared.kafka.records import round_contexts
from shared.tracing import attached

log = structlog.get_logger(__name__)

Request = RunRequested | RangeRequested
Result = list[Outgoing] | BaseException

#: How long a round goes on beginning requests (seconds): the requests not begun by then go to the next round.
ROUND_SECONDS = 2.0


def request_rounds(
    handle: Callable[[Request], list[Outgoing]],
    hold: Callable[[Request], HoldRecord | None],
    stopping: Callable[[], bool],
    *,
    publish: Callable[[list[Outgoing]], None] | None = None,
    start: Callable[[Sequence[Request]], object] | None = None,
    pending: Callable[[Request], HoldRecord | None] | None = None,
    prepare: Callable[[Sequence[Request]], object] | None = None,
    round_seconds: float = ROUND_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Sequence[Request]], list[Result]]:
    """A round handler: each request held (``hold``), or handled (``handle``) in its record's trace context.

    A request whose handling meets an outage hands it and the rest of the round back (the loop polls them again
    after a pause), as the one-by-one loop does; once ``stopping``, or once the round has taken ``round_seconds``,
    the requests not begun are held (until now), so that they are neither committed nor dead-lettered (the next
    round, or the next owner of their partitions, takes them). With ``publish``, the records a request's handling
    returns are published (``publish`` returns once they are acknowledged) before the next request is begun, its
    result then empty; a failure to publish is the request's (an outage hands it back).

    With ``start``, the requests due (not held) are first given to it together (the extractor starts them in
    bulk, see bulk_starts), then handled one by one as above; should it fail, they are handled one by one all
    the same (the outage, if it is one, met again there). Which are due is told by ``pending`` (``hold`` without
    its side effects, see ``StartTimes.pending``; ``hold`` itself when not given), so that ``hold`` is called
    for a request only as it is reached, as without ``start``: a request handed back round after round (the
    round's time up) is not counted as started early at each. With ``start`` and ``prepare``, the requests held
    (due later) are given to ``prepare`` together, once a round, after its requests are handled (unless stopping);
    should it fail, nothing else changes.
    """

    def handle_round(requests: Sequence[Request]) -> list[Result]:
        started = clock()
        results: list[Result] = []
        begun = False
        later: list[Request] = []
        if start is not None and not stopping():
            due: list[Request] = []
            for request in requests:
                (due if (pending or hold)(request) is None else later).append(request)
            if due:
                try:
                    start(due)
                except Exception as exc:  # noqa: BLE001 - each request is then handled (or handed back) on its own
                    log.warning("run requests not started together", error=f"{type(exc).__name__}: {exc}")
        for request, context in zip(requests, round_contexts(requests), strict=True):
            if results and isinstance(outage := results[-1], BaseException) and is_interruption(outage):
                results.append(outage)
                continue
            if stopping():
                results.append(HoldRecord("the extractor is stopping", until=0.0))
                continue
            if begun and clock() - started >= round_seconds:
                results.append(HoldRecord("handed to the next round", until=0.0))
                continue
            if (held := hold(request)) is not None:
                results.append(held)
                continue
            begun = True
            with attached(context):
                try:
                    outgoing = handle(request)
                    if publish is not None and outgoing:
                        publish(outgoing)
                        outgoing = []
                    results.append(outgoing)
                except Exception as exc:  # noqa: BLE001 - the loop dead-letters it, or hands it back on an outage
                    results.append(exc)
        if later and prepare is not None and not stopping():
            # After the round's requests, never before them: a read ahead must not take the time of those due now.
            try:
                prepare(later)
            except Exception as exc:  # noqa: BLE001 - only a read ahead: their start reads them again
                log.info("held run requests not prepared", error=f"{type(exc).__name__}: {exc}")
        return results

    return handle_round
