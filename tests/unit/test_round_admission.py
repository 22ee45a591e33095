"""A dispatcher round's admission (services/dispatcher/round_admission.py): batches begun in order within a bound of
requests begun and not finished, none begun after the round's deadline, every batch either begun once or handed
back, never both, never lost. Pure: the clock is a number the tests move."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher, Stopping
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.round_admission import (
    MIN_ADMITTED_REQUESTS,
    PRIORITY_RANKS,
    RoundAdmission,
    Verdict,
    admission_order,
    admitted_requests,
)
from services.dispatcher.settings import DispatcherSettings
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch, Priority
from shared.kafka.held_records import HoldRecord
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics


def test_the_bound_is_sixteen_waves_of_the_concurrency_and_two_default_records_at_least():
    assert admitted_requests(8) == 128 == MIN_ADMITTED_REQUESTS
    assert admitted_requests(32) == 512
    assert admitted_requests(1) == 128


def test_batches_begin_while_they_fit_then_wait_for_requests_to_finish():
    admission = RoundAdmission(bound=128, deadline=10.0, started=0.0)
    assert admission.verdict(64, 0.0) is Verdict.BEGIN
    first = admission.begin(64)
    assert admission.verdict(64, 0.1) is Verdict.BEGIN
    admission.begin(64)
    assert admission.verdict(64, 0.2) is Verdict.WAIT
    assert not admission.ready
    admission.request_done(first)
    assert not admission.ready  # 127 outstanding: a record of 64 does not fit yet
    for _ in range(63):
        admission.request_done(first)
    assert admission.ready
    assert admission.outstanding == 64
    assert admission.verdict(64, 0.3) is Verdict.BEGIN


def test_a_batch_larger_than_the_bound_begins_alone():
    admission = RoundAdmission(bound=128, deadline=10.0, started=0.0)
    admission.begin(1)
    assert admission.verdict(500, 0.0) is Verdict.WAIT
    admission.batch_done(0)
    assert admission.verdict(500, 0.0) is Verdict.BEGIN


def test_after_the_deadline_the_rest_of_the_round_is_handed_back_even_with_room():
    admission = RoundAdmission(bound=128, deadline=10.0, started=100.0)
    admission.begin(1)
    admission.batch_done(0)
    assert admission.verdict(1, 109.9) is Verdict.BEGIN
    assert admission.verdict(1, 110.0) is Verdict.HAND_BACK
    assert admission.verdict(1, 100.0) is Verdict.HAND_BACK  # once handing back, for the rest of the round


def test_the_first_batch_begins_whatever_the_deadline():
    admission = RoundAdmission(bound=128, deadline=0.5, started=0.0)
    assert admission.verdict(1000, 60.0) is Verdict.BEGIN  # a round makes progress however late it starts
    admission.begin(1000)
    assert admission.verdict(1, 60.0) is Verdict.HAND_BACK


def test_a_splits_extra_requests_are_not_counted_and_the_batch_end_releases_the_rest():
    admission = RoundAdmission(bound=128, deadline=10.0, started=0.0)
    index = admission.begin(2)
    for _ in range(5):  # the request, then isolating splits
        admission.request_done(index)
    assert admission.outstanding == 0
    other = admission.begin(10)
    admission.request_done(other)
    admission.batch_done(other)  # e.g. a breaker hold cancelled its other requests
    admission.batch_done(other)
    assert admission.outstanding == 0


def test_the_poll_interval_is_the_deadline_and_the_admitted_requests_retry_budgets():
    one = DispatcherSettings(dispatcher_rounds_in_flight=1)
    # 10 s, then 128 requests 8 at a time: 16 waves of (120 s + 60 s) with a 1.5 margin.
    assert one.max_poll_interval_ms == (10 + 16 * 180 * 1.5) * 1000
    # Independent of the round's size: 100,000 requests a round wait no longer.
    big_rounds = DispatcherSettings(dispatcher_rounds_in_flight=1, dispatcher_round_requests=100_000)
    big_polls = DispatcherSettings(dispatcher_rounds_in_flight=1, dispatcher_poll_records=10_000)
    assert big_rounds.max_poll_interval_ms == big_polls.max_poll_interval_ms == one.max_poll_interval_ms
    # Each round in flight may have as many requests to finish (2 by default: 2.4 h); a longer deadline adds itself.
    assert DispatcherSettings().max_poll_interval_ms == (10 + 32 * 180 * 1.5) * 1000
    longer = DispatcherSettings(dispatcher_rounds_in_flight=1, dispatcher_round_seconds=70)
    assert longer.max_poll_interval_ms == (70 + 16 * 180 * 1.5) * 1000
    # The concurrency does not change the waves: 16 of them, 128 requests at least.
    wide = DispatcherSettings(dispatcher_rounds_in_flight=1, dispatcher_concurrency=64)
    assert wide.max_poll_interval_ms == one.max_poll_interval_ms


def test_the_most_urgent_priority_is_offered_first_and_the_rounds_order_kept_within_a_priority():
    normal, high, low = Priority.NORMAL, Priority.HIGH, Priority.LOW
    # Two normal batches handed back by the last round (first in the round), then new ones polled.
    assert admission_order([normal, normal, low, high, normal, high]) == [3, 5, 0, 1, 4, 2]
    assert admission_order([]) == []


@settings(max_examples=300, deadline=None)
@given(priorities=st.lists(st.sampled_from(list(Priority)), max_size=60))
def test_admission_order_is_a_permutation_by_priority_stable_within_one(priorities):
    """Every batch offered exactly once; never a less urgent one before a more urgent one; within a priority, the
    round's order (the batches handed back, first in the round, stay ahead of new ones of their priority, and a
    partition's records, all of one topic and so one priority, stay in offset order)."""
    order = admission_order(priorities)
    assert sorted(order) == list(range(len(priorities)))
    ranks = [PRIORITY_RANKS[priorities[position]] for position in order]
    assert ranks == sorted(ranks)
    for priority in Priority:
        assert [p for p in order if priorities[p] is priority] == [
            p for p in range(len(priorities)) if priorities[p] is priority
        ]


@dataclass
class Simulated:
    """A round driven as the dispatcher drives it, each step chosen by the test."""

    begun: list[int] = field(default_factory=list)
    handed_back: list[int] = field(default_factory=list)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=300), max_size=40),
    bound=st.integers(min_value=1, max_value=256),
    deadline=st.floats(min_value=0.0, max_value=20.0),
    steps=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.booleans(), st.floats(0.0, 3.0))),
)
def test_every_batch_is_begun_once_or_handed_back_within_the_bound(sizes, bound, deadline, steps):
    """Whatever the sizes, bound, deadline and order in which requests and batches finish: every batch is begun once
    or handed back (never both, none lost), the begun ones are the round's first, none begins after the deadline
    (but the first), and the requests begun and not finished stay within the bound, or one batch begun alone."""
    admission = RoundAdmission(bound=bound, deadline=deadline, started=0.0)
    now, moves = 0.0, iter(steps)
    open_batches: dict[int, int] = {}  # index -> its requests not finished
    result = Simulated()
    position = 0
    while position < len(sizes):
        verdict = admission.verdict(sizes[position], now)
        if verdict is Verdict.HAND_BACK:
            result.handed_back.extend(range(position, len(sizes)))
            break
        if verdict is Verdict.BEGIN:
            assert position == 0 or now < deadline
            index = admission.begin(sizes[position])
            assert index == position
            result.begun.append(index)
            open_batches[index] = sizes[position]
            assert admission.outstanding <= bound or admission.outstanding == sizes[position]
            position += 1
            continue
        # WAIT: something finishes, or time passes (the driver wakes at the deadline at the latest).
        assert open_batches, "a batch waits only behind requests outstanding"
        pick, whole, elapsed = next(moves, (0, True, deadline + 1))
        now += elapsed
        index = sorted(open_batches)[pick % len(open_batches)]
        if whole or open_batches[index] <= 1:
            admission.batch_done(index)
            del open_batches[index]
        else:
            admission.request_done(index)
            open_batches[index] -= 1
        assert admission.outstanding == sum(open_batches.values())
    for index in list(open_batches):
        admission.batch_done(index)
    assert admission.outstanding == 0
    assert sorted(result.begun + result.handed_back) == list(range(len(sizes)))
    assert not set(result.begun) & set(result.handed_back)
    assert result.begun == list(range(len(result.begun)))  # a prefix: the round's order is kept
    assert bool(sizes) <= bool(result.begun)  # a round with batches begins one at least


# --- the dispatcher's rounds, driven by the admission (an in-memory partner, the clock moved by the test) -----------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Partner:
    """Answers 200 to every request, keeping its Idempotency-Key; ``on_send`` runs as each request arrives."""

    def __init__(self, on_send: Callable[[], None]) -> None:
        self.keys: list[str] = []
        self.on_send = on_send

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.keys.append(dict(request.headers)["Idempotency-Key"])
        self.on_send()
        await asyncio.sleep(0)
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


class Catalog:
    """Template ``t`` (``batch_size`` members a request) of profile ``p``; no run cancelled."""

    def __init__(self, batch_size: int) -> None:
        profile = ConnectionProfile(name="p", base_url="https://partner.example")
        template = HttpTemplate(name="t", query="q", profile="p", path="/m", batch_size=batch_size)
        self.objects: dict[tuple[type[CatalogObject], str], CatalogObject] = {
            (ConnectionProfile, "p"): profile,
            (HttpTemplate, "t"): template,
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


def round_dispatcher(partner: Partner, clock: Clock, batch_size: int = 500) -> Dispatcher:
    catalog = Catalog(batch_size)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, RetryBudget(max_attempts=1)),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        round_seconds=1.0,
        clock=clock,
    )
    dispatcher.admitted_requests = 2
    return dispatcher


def batches(count: int, members: int = 1, priority: Priority = Priority.NORMAL) -> list[MemberBatch]:
    run_id = uuid.uuid4()
    return [
        MemberBatch(
            run_id=run_id,
            definition="d",
            template="t",
            batch_index=i,
            members=[{"id": 1}] * members,
            priority=priority,
        )
        for i in range(count)
    ]


def handed_back_total() -> float:
    return REGISTRY.get_sample_value("member_export_dispatcher_round_handed_back_batches_total") or 0.0


def test_a_round_past_its_deadline_hands_back_the_batches_it_has_not_begun():
    clock = Clock()

    def late() -> None:
        clock.now += 5.0  # each request takes the round past its 1 s deadline

    partner = Partner(late)
    dispatcher = round_dispatcher(partner, clock)
    sent = batches(5)
    handed_back_before = handed_back_total()
    results = asyncio.run(dispatcher.handle_all(sent))
    assert handed_back_total() - handed_back_before == 3  # what an SRE's dashboard counts
    # Two begun at once (the bound), delivered; the others handed back to the next round, nothing of theirs sent.
    assert all(isinstance(result, list) and len(result) == 1 for result in results[:2])
    # Held since they were handed back (a monotonic instant, due at once): the longest held are due first.
    assert all(isinstance(result, HoldRecord) and 0.0 < result.until <= time.monotonic() for result in results[2:])
    assert sorted(partner.keys) == sorted(b.identity for b in sent[:2])
    # The next round (the loop hands them back first) begins where this one stopped.
    clock.now = 100.0
    again = asyncio.run(dispatcher.handle_all(sent[2:]))
    assert isinstance(again[0], list)
    assert sorted(partner.keys) == sorted(b.identity for b in sent[:2] + sent[2:4])


def test_a_round_within_its_deadline_begins_every_batch_within_the_bound():
    clock = Clock()
    partner = Partner(lambda: None)
    dispatcher = round_dispatcher(partner, clock, batch_size=1)
    sent = batches(6, members=3)  # 3 requests a record: one record at a time within a bound of 2 (begun alone)
    results = asyncio.run(dispatcher.handle_all(sent))
    assert all(isinstance(result, list) for result in results)
    assert len(partner.keys) == 18
    assert dispatcher.next_poll_records() == min(64, dispatcher.round_requests // 3)


def test_a_stop_hands_back_the_batches_not_begun_as_stopping():
    clock = Clock()
    dispatcher: Dispatcher

    def stop() -> None:
        dispatcher.stopping.set()

    partner = Partner(stop)
    dispatcher = round_dispatcher(partner, clock)
    sent = batches(5)
    handed_back_before = handed_back_total()
    results = asyncio.run(dispatcher.handle_all(sent))
    assert all(isinstance(result, Stopping) for result in results[2:])  # read again by the partition's next owner
    assert handed_back_total() == handed_back_before  # nothing handed to a next round of this replica
    assert len(partner.keys) <= 2  # those not begun sent nothing


def test_a_new_high_priority_batch_begins_ahead_of_normal_batches_handed_back():
    clock = Clock()

    def late() -> None:
        clock.now += 5.0  # each request takes the round past its 1 s deadline

    partner = Partner(late)
    dispatcher = round_dispatcher(partner, clock)
    normal = batches(5)
    first = asyncio.run(dispatcher.handle_all(normal))
    handed_back = [batch for batch, result in zip(normal, first, strict=True) if isinstance(result, HoldRecord)]
    assert handed_back == normal[2:]
    # The next round: the loop hands the held batches first, then what it polled (high-priority batches among them).
    urgent = batches(2, priority=Priority.HIGH)
    later = batches(1)
    partner.keys.clear()
    clock.now = 100.0
    round_two = [*handed_back, urgent[0], *later, urgent[1]]
    results = asyncio.run(dispatcher.handle_all(round_two))
    # Two begun (the bound), the high-priority ones, in their order; the rest handed back again, in the round's
    # order, results given in the round's order whatever the order they were begun in.
    assert partner.keys == [urgent[0].identity, urgent[1].identity]
    begun = [batch for batch, result in zip(round_two, results, strict=True) if isinstance(result, list)]
    assert begun == urgent
    assert all(isinstance(results[i], HoldRecord) for i in (0, 1, 2, 4))
    # Then the handed-back normal batches, ahead of the later normal one.
    partner.keys.clear()
    clock.now = 200.0
    asyncio.run(dispatcher.handle_all([*handed_back, *later]))
    assert partner.keys == [handed_back[0].identity, handed_back[1].identity]


@settings(max_examples=60, deadline=None)
@given(
    priorities=st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=12),
    step=st.sampled_from([0.0, 0.3, 5.0]),
)
def test_a_round_begins_a_priority_ordered_prefix_and_answers_in_the_rounds_order(priorities, step):
    """Whatever the priorities and however fast the round runs out: each batch is begun (and sent) once or handed
    back, never both; those begun are the first of the priority order; each result is its own batch's."""
    clock = Clock()

    def late() -> None:
        clock.now += step

    partner = Partner(late)
    dispatcher = round_dispatcher(partner, clock)
    plain = batches(len(priorities))
    sent = [batch.model_copy(update={"priority": p}) for batch, p in zip(plain, priorities, strict=True)]
    results = asyncio.run(dispatcher.handle_all(sent))
    assert len(results) == len(sent)
    begun = [i for i, result in enumerate(results) if isinstance(result, list)]
    assert all(isinstance(results[i], HoldRecord) for i in range(len(sent)) if i not in begun)
    assert set(begun) == set(admission_order(priorities)[: len(begun)])
    assert begun  # a round begins one batch at least
    assert sorted(partner.keys) == sorted(sent[i].identity for i in begun)
    for i in begun:  # each begun batch's outcome is in its own place
        outcomes = [RUN_EVENT_ADAPTER.validate_json(outgoing.value) for outgoing in results[i]]
        assert [(o.batch_index, o.delivered) for o in outcomes if isinstance(o, BatchOutcome)] == [(i, 1)]
