"""Review probes of the dispatcher's request workers (services/dispatcher/request_workers.py): a worker must neither
die on a request's own CancelledError (stranding the requests queued behind it) nor swallow the cancellation that
ends it (going on with the next queued request)."""

from __future__ import annotations

import asyncio

import pytest

from services.dispatcher.dispatching import Stopping
from services.dispatcher.request_workers import RequestWorkers
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome
from shared.kafka import Outgoing
from shared.outbound.partner_http import PartnerAnswer
from tests.unit.test_request_workers import Partner, dispatcher_of, records

DEADLINE = 5.0  # seconds: a wait for a condition, never a pause


async def cancelled_of_its_own() -> int:
    """A request whose CancelledError comes from something it awaited (a future cancelled elsewhere), not from a
    cancellation of the worker handling it."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.cancel()
    return await future


def test_a_request_cancelled_of_its_own_fails_its_batch_and_leaves_no_request_stranded_in_the_queue():
    workers = RequestWorkers(1)
    ran: list[int] = []

    async def other(number: int) -> int:
        ran.append(number)
        return number

    async def main() -> tuple[BaseException | None, list[int] | None, int]:
        first = asyncio.ensure_future(workers.gather(cancelled_of_its_own(), other(1)))
        second = asyncio.ensure_future(workers.gather(other(2)))
        done, pending = await asyncio.wait({first, second}, timeout=DEADLINE)
        for task in pending:  # stranded: what the old gather_or_cancel never left
            task.cancel()
        await asyncio.wait({first, second})
        failure = first.exception() if first.done() and not first.cancelled() else None
        if first.cancelled():
            failure = asyncio.CancelledError()
        return failure, (second.result() if second in done else None), len(pending)

    failure, second, stranded = asyncio.run(main())
    assert stranded == 0  # every gather answered (the old TaskGroup raised the CancelledError at once)
    assert isinstance(failure, asyncio.CancelledError)  # the batch is not answered with a None result
    assert second == [2]  # another batch's request queued behind it is still sent
    assert workers.busy == 0


def test_a_worker_cancelled_while_its_batch_cancels_its_request_ends_and_begins_no_other_request():
    """The worker's own cancellation (its event loop ending) arriving while its group's cancellation is under way
    must end it, not be spent as the group's: otherwise it goes on sending the next queued request."""
    workers = RequestWorkers(1)
    begun: list[str] = []

    async def main() -> list[str]:
        a_started = asyncio.Event()

        async def waiting() -> None:
            begun.append("a")
            a_started.set()
            await asyncio.Event().wait()

        async def later() -> None:
            begun.append("b")

        batch_a = asyncio.ensure_future(workers.gather(waiting()))
        batch_b = asyncio.ensure_future(workers.gather(later()))
        await asyncio.wait_for(a_started.wait(), DEADLINE)
        (worker,) = workers._workers  # the one worker
        batch_a.cancel()  # the batch is abandoned: its request is cancelled (by _abandon, at its next step) ...
        await asyncio.sleep(0)  # (a turn of the loop: batch_a's step runs _abandon; not a timed wait)
        worker.cancel()  # ... and in the same turn the worker itself is cancelled (its event loop ends)
        await asyncio.wait({worker}, timeout=DEADLINE)
        batch_b.cancel()
        await asyncio.wait({batch_a, batch_b}, timeout=DEADLINE)
        return begun

    begun_requests = asyncio.run(main())
    assert begun_requests == ["a"]  # "b" must not be sent by a worker told to end


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_gather_after_a_request_cancelled_of_its_own_is_served(concurrency):
    workers = RequestWorkers(concurrency)

    async def answer(number: int) -> int:
        return number

    async def main() -> list[int]:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(workers.gather(cancelled_of_its_own()), DEADLINE)
        return await asyncio.wait_for(workers.gather(answer(1), answer(2), answer(3)), DEADLINE)

    assert asyncio.run(main()) == [1, 2, 3]


class CancelledPartner(Partner):
    """Member 0's request meets a CancelledError of its own (a future the HTTP client awaited was cancelled)."""

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        if b'"id":0' in request.content:
            await cancelled_of_its_own()
        return await super().send(request, timeout, network)


def test_a_dispatcher_request_cancelled_of_its_own_hands_its_batch_back_and_the_round_goes_on():
    """On main the batch was dead-lettered ("could not handle the batch": a None result), or, with more requests
    queued than workers, the round never answered; gather_or_cancel had handed it back (Stopping) at once."""
    partner = CancelledPartner()
    dispatcher = dispatcher_of(partner, concurrency=1)

    async def main() -> list[list[Outgoing] | BaseException]:
        return await asyncio.wait_for(dispatcher.handle_all(records(0, 3, 2)), DEADLINE)

    first, *others = asyncio.run(main())
    assert isinstance(first, Stopping)  # handed back uncommitted: no member dead-lettered
    for result in others:
        assert isinstance(result, list)
        outcome = RUN_EVENT_ADAPTER.validate_json(result[0].value)
        assert isinstance(outcome, BatchOutcome)
        assert outcome.delivered == 2
        assert outcome.failed == 0
    assert dispatcher.workers.busy == 0
    assert dispatcher.workers.queued == 0
