"""The dispatcher's request workers (services/dispatcher/request_workers.py): at most ``concurrency`` requests handled
at once whatever the batches and rounds in flight, in the order they were submitted (the earlier round's first), a
failure cancelling its batch's other requests, a stop cancelling them all, each request in its batch's trace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher, Stopping
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.request_workers import RequestWorkers
from shared import tracing
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics


class Load:
    """Records which awaitables run, in which order, and how many at once."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.running = 0
        self.most = 0

    async def job(self, group: int, index: int, steps: int) -> tuple[int, int]:
        self.started.append((group, index))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            for _ in range(steps):
                await asyncio.sleep(0)  # a yield to the loop, not a timed wait
        finally:
            self.running -= 1
        return group, index


@settings(max_examples=60, deadline=None)
@given(
    concurrency=st.integers(1, 6),
    groups=st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=12), min_size=1, max_size=5),
)
def test_at_most_concurrency_run_at_once_in_submission_order_and_every_result_comes_back_in_order(concurrency, groups):
    load = Load()
    workers = RequestWorkers(concurrency)

    async def main() -> list[list[tuple[int, int]]]:
        # Every group submitted before any runs (as the rounds in flight do), the first one first.
        return await asyncio.gather(
            *(
                workers.gather(*(load.job(g, i, steps) for i, steps in enumerate(group)))
                for g, group in enumerate(groups)
            )
        )

    results = asyncio.run(main())
    assert results == [[(g, i) for i in range(len(group))] for g, group in enumerate(groups)]
    assert load.most <= concurrency
    # Served in the order submitted: the earlier group's (round's) requests all begin before the later group's.
    assert load.started == [(g, i) for g, group in enumerate(groups) for i in range(len(group))]
    assert workers.busy == 0
    assert workers.queued == 0


def test_a_failure_cancels_the_groups_other_awaitables_waits_for_them_and_is_raised_as_itself():
    workers = RequestWorkers(2)
    events: list[str] = []
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def slow(name: str) -> str:
            events.append(f"{name} began")
            try:
                await gate.wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0)  # its clean-up takes a turn of the loop: the caller waits for it
                events.append(f"{name} cancelled")
                raise
            return name

        async def failing() -> str:
            events.append("failing began")
            raise HoldRecord("held", until=1.0)

        async def other(name: str) -> str:
            events.append(f"{name} began")
            return name

        async def grouped() -> str:
            outcome = "not grouped"
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(failing())
            except* HoldRecord:
                outcome = "grouped"
            return outcome

        async def cancellations() -> int:
            for _ in range(5):
                await asyncio.sleep(0)
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        failed = asyncio.ensure_future(workers.gather(slow("a"), failing(), other("never")))
        # Another group's, queued behind: not cancelled with the failing group, handled by both workers, the one whose
        # awaitable was cancelled too, which carries no cancellation left counted into them.
        neighbour = asyncio.ensure_future(workers.gather(cancellations(), cancellations()))
        with pytest.raises(HoldRecord, match="held"):
            await failed
        assert await neighbour == [0, 0]
        assert events == ["a began", "failing began", "a cancelled"]  # "never" dropped, never begun
        # The workers go on with the next group, the cancellation spent: a task group's failure inside an awaitable
        # is still its own (a cancellation left counted on the worker would be raised instead).
        assert await workers.gather(grouped(), grouped()) == ["grouped", "grouped"]
        assert await workers.gather(cancellations(), cancellations()) == [0, 0]  # none left counted on a worker
        assert await workers.gather(other("next")) == ["next"]

    asyncio.run(main())


def test_cancelling_the_caller_drops_what_has_not_begun_and_cancels_what_runs_before_it_returns():
    workers = RequestWorkers(1)
    events: list[str] = []

    async def waiting(name: str) -> None:
        events.append(f"{name} began")
        try:
            await asyncio.Event().wait()
        finally:
            events.append(f"{name} ended")

    async def main() -> None:
        caller = asyncio.ensure_future(workers.gather(waiting("first"), waiting("second")))
        while not events:
            await asyncio.sleep(0)
        later = asyncio.ensure_future(workers.gather(waiting("later group")))
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        while "later group began" not in events:  # the worker goes on with the next group's
            await asyncio.sleep(0)
        assert events == ["first began", "first ended", "later group began"]  # the second was never begun
        later.cancel()
        with pytest.raises(asyncio.CancelledError):
            await later
        assert workers.busy == 0
        assert workers.queued == 0

    asyncio.run(main())


def span_context(trace_id: int) -> otel_context.Context:
    span = NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(1)))
    return trace.set_span_in_context(span)


def test_each_awaitable_runs_in_the_trace_context_of_whoever_gathered_it():
    workers = RequestWorkers(1)  # one worker handles both groups' awaitables, one after the other

    async def traceparent() -> str | None:
        await asyncio.sleep(0)
        return tracing.current_http_headers().get("traceparent")

    async def in_trace(trace_id: int | None) -> list[str | None]:
        token = otel_context.attach(span_context(trace_id) if trace_id else otel_context.Context())
        try:
            return await workers.gather(traceparent(), traceparent())
        finally:
            otel_context.detach(token)

    async def main() -> list[list[str | None]]:
        return list(await asyncio.gather(in_trace(0xA), in_trace(None), in_trace(0xB)))

    first, untraced, second = asyncio.run(main())
    assert {value[3:35] for value in first if value} == {f"{0xA:032x}"}
    assert None not in first
    assert untraced == [None, None]
    assert {value[3:35] for value in second if value} == {f"{0xB:032x}"}
    assert None not in second


# --- the dispatcher on its workers ------------------------------------------------------------------------------------


class Partner:
    """Answers each request after ``turns`` turns of the loop (its status by the member's id), counting them; once
    ``hang`` is set, answers no more (a request waits until cancelled)."""

    def __init__(self, status: Callable[[int], int] = lambda _: 200, turns: int = 3) -> None:
        self.status, self.turns = status, turns
        self.hang = False
        self.order: list[int] = []
        self.authorizations: list[str | None] = []
        self.in_flight = self.most = 0

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        member = int(request.content.decode().split('"id":')[1].split(",")[0].split("}")[0])
        self.order.append(member)
        self.authorizations.append(dict(request.headers).get("Authorization"))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            for _ in range(self.turns):
                await asyncio.sleep(0)
            status = self.status(member)
            if self.hang:
                await asyncio.Event().wait()
        finally:
            self.in_flight -= 1
        return PartnerAnswer(status, None, b"")

    async def aclose(self) -> None:
        return None


class Catalog:
    def __init__(self, profile: ConnectionProfile | None = None) -> None:
        template = HttpTemplate(
            name="t", query="q", profile="p", path="/m", batch_size=1, json_body={"id": "{{ member.id }}"}
        )
        self.objects: dict[tuple[type[CatalogObject], str], CatalogObject] = {
            (ConnectionProfile, "p"): profile or ConnectionProfile(name="p", base_url="https://partner.example"),
            (HttpTemplate, "t"): template,
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


def dispatcher_of(partner: Partner, concurrency: int, profile: ConnectionProfile | None = None) -> Dispatcher:
    catalog = Catalog(profile)
    return Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, RetryBudget(max_attempts=1)),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=concurrency,
    )


def records(first: int, count: int, members: int) -> list[MemberBatch]:
    run_id = uuid.uuid4()
    return [
        MemberBatch(
            run_id=run_id,
            definition="d",
            template="t",
            batch_index=index,
            members=[{"id": first + index * members + k} for k in range(members)],
        )
        for index in range(count)
    ]


def test_rounds_in_flight_share_the_concurrency_bound_and_the_earlier_round_is_served_first():
    partner = Partner()
    dispatcher = dispatcher_of(partner, concurrency=3)
    earlier, later = records(0, 3, 5), records(100, 3, 5)

    async def main() -> list[list[list[Outgoing] | BaseException]]:
        await dispatcher.handle_all(records(1000, 1, 1))  # warm: the template's renders are known to be quick
        partner.order.clear()
        return list(await asyncio.gather(dispatcher.handle_all(earlier), dispatcher.handle_all(later)))

    results = asyncio.run(main())
    outcomes = [
        RUN_EVENT_ADAPTER.validate_json(result[0].value)
        for round_results in results
        for result in round_results
        if isinstance(result, list)
    ]
    assert len(outcomes) == 6
    assert all(isinstance(o, BatchOutcome) and o.delivered == 5 and o.failed == 0 for o in outcomes)
    assert partner.most == 3  # the bound, shared by both rounds
    assert partner.order == list(range(15)) + list(range(100, 115))  # each round's in its order, the earlier first
    assert dispatcher.workers.busy == 0


def test_a_stop_cancels_the_requests_of_every_round_in_flight_and_answers_stopping():
    dispatcher: Dispatcher

    def status(member: int) -> int:
        if member == 1:
            dispatcher.stopping.set()  # SIGTERM while the rounds' requests are under way
            partner.hang = True  # no request answers any more: each is cut short
        return 200

    partner = Partner(status)
    dispatcher = dispatcher_of(partner, concurrency=2)

    async def main() -> list[list[list[Outgoing] | BaseException]]:
        await dispatcher.handle_all(records(1000, 1, 1))  # warm: the template's renders are known to be quick
        partner.order.clear()
        return list(
            await asyncio.gather(dispatcher.handle_all(records(0, 2, 4)), dispatcher.handle_all(records(100, 2, 4)))
        )

    results = asyncio.run(main())
    assert all(isinstance(result, Stopping) for round_results in results for result in round_results)
    assert partner.order == [0, 1, 2]  # 0 answered, 1 and 2 cut short; the rest were never sent
    assert partner.in_flight == 0  # every request cut short has ended before handle_all answered
    assert dispatcher.workers.busy == 0
    assert dispatcher.workers.queued == 0


def test_a_refused_member_is_isolated_in_a_batch_of_several_requests_on_the_workers():
    partner = Partner(lambda member: 422 if member % 4 == 1 else 200)
    dispatcher = dispatcher_of(partner, concurrency=2)
    results = asyncio.run(dispatcher.handle_all(records(0, 2, 4)))
    letters_and_outcomes = [result for result in results if isinstance(result, list)]
    assert len(letters_and_outcomes) == 2
    for result in letters_and_outcomes:
        outcome = RUN_EVENT_ADAPTER.validate_json(result[-1].value)
        assert isinstance(outcome, BatchOutcome)
        assert outcome.delivered == 3
        assert outcome.failed == 1
    assert partner.most <= 2


def bearer_profile() -> ConnectionProfile:
    return ConnectionProfile.model_validate(
        {"name": "p", "base_url": "https://partner.example", "auth": {"type": "bearer", "token": "env:PARTNER_TOKEN"}}
    )


def test_static_credentials_are_sent_on_every_request_and_read_again_for_the_next_batch(
    monkeypatch: pytest.MonkeyPatch,
):
    partner = Partner()
    dispatcher = dispatcher_of(partner, concurrency=2, profile=bearer_profile())
    monkeypatch.setenv("PARTNER_TOKEN", "before-rotation")
    asyncio.run(dispatcher.handle_all(records(0, 1, 3)))
    monkeypatch.setenv("PARTNER_TOKEN", "after-rotation")  # a batch begun after the rotation sends the new one
    asyncio.run(dispatcher.handle_all(records(10, 1, 3)))
    assert partner.authorizations == ["Bearer before-rotation"] * 3 + ["Bearer after-rotation"] * 3


def test_credentials_that_make_an_invalid_header_fail_every_request_of_the_batch_without_quoting_them(
    monkeypatch: pytest.MonkeyPatch,
):
    partner = Partner()
    dispatcher = dispatcher_of(partner, concurrency=2, profile=bearer_profile())
    monkeypatch.setenv("PARTNER_TOKEN", "secret-with-newline\n")
    [result] = asyncio.run(dispatcher.handle_all(records(0, 1, 3)))
    assert isinstance(result, list)
    outcome = RUN_EVENT_ADAPTER.validate_json(result[-1].value)
    assert isinstance(outcome, BatchOutcome)
    assert outcome.failed == 3
    assert "invalid Authorization header" in (outcome.error or "")
    assert "secret-with-newline" not in repr(result)
    assert partner.order == []  # nothing was sent
