"""Isolating refused members by halving: every member accounted for once, refusals pinned down."""

import asyncio
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.splitting import IsolationResult, Slice
from services.dispatcher.splitting import deliver_in_requests as deliver_in_requests_async
from services.dispatcher.splitting import deliver_isolating as deliver_isolating_async


@dataclass(frozen=True)
class Result:
    success: bool
    status: int | None


def partner(bad: set[int], status: int = 400):
    """A partner refusing any request that holds a bad member; records what it was sent."""
    sent: list[Slice] = []

    async def send(part: Slice) -> Result:
        sent.append(part)
        refused = any(i in bad for i in range(part.start, part.stop))
        return Result(success=not refused, status=status if refused else 200)

    return send, sent


def deliver_isolating(size: int, send, *, split_budget: int) -> IsolationResult[Result]:
    return asyncio.run(deliver_isolating_async(size, send, split_budget=split_budget))


@given(st.integers(1, 600), st.data())
def test_with_budget_enough_exactly_the_bad_members_are_refused(size, data):
    bad = data.draw(st.sets(st.integers(0, size - 1), max_size=4))
    send, sent = partner(bad)
    result = deliver_isolating(size, send, split_budget=10_000)
    assert [(r.slice.start, r.slice.size) for r in result.refused] == [(i, 1) for i in sorted(bad)]
    assert result.delivered == size - len(bad)
    assert result.requests == len(sent)


@given(st.integers(1, 600), st.data(), st.integers(0, 40))
def test_every_member_is_accounted_for_once_within_the_budget(size, data, budget):
    bad = data.draw(st.sets(st.integers(0, size - 1)))
    send, sent = partner(bad)
    result = deliver_isolating(size, send, split_budget=budget)
    assert len(sent) <= 1 + budget
    covered = sorted(i for r in result.refused for i in range(r.slice.start, r.slice.stop))
    assert len(covered) == len(set(covered))
    assert set(covered) >= bad
    assert result.delivered + len(covered) == size


def test_one_bad_member_in_500_costs_about_two_log2_requests():
    send, sent = partner({321})
    result = deliver_isolating(500, send, split_budget=64)
    assert [(r.slice.start, r.slice.stop) for r in result.refused] == [(321, 322)]
    assert len(sent) == 1 + 2 * 9  # 500 -> 250 -> 125 -> 63 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1


def test_an_auth_refusal_is_not_split():
    send, sent = partner({0, 1, 2}, status=401)
    result = deliver_isolating(100, send, split_budget=64)
    assert len(sent) == 1
    assert [(r.slice.start, r.slice.stop) for r in result.refused] == [(0, 100)]


def test_a_delivered_batch_is_one_request():
    send, sent = partner(set())
    result = deliver_isolating(500, send, split_budget=64)
    assert (result.delivered, result.refused, len(sent)) == (500, [], 1)


def deliver_in_requests(size: int, request_size: int, send, *, split_budget: int) -> IsolationResult[Result]:
    return asyncio.run(
        deliver_in_requests_async(size, request_size, send, split_budget=split_budget, gather=asyncio.gather)
    )


@given(st.integers(1, 300), st.integers(1, 40), st.data(), st.integers(0, 20))
def test_a_record_of_many_requests_accounts_for_every_member_once(size, request_size, data, budget):
    bad = data.draw(st.sets(st.integers(0, size - 1)))
    send, sent = partner(bad)
    result = deliver_in_requests(size, request_size, send, split_budget=budget)
    first_requests = [part for part in sent if part.size == request_size or part.stop == size]
    # Every request of the record starts on a multiple of the request size and holds at most that many members.
    assert {part.start for part in sent if part.start % request_size == 0} >= set(range(0, size, request_size))
    assert all(part.size <= request_size for part in sent)
    assert len(first_requests) >= -(-size // request_size)
    covered = sorted(i for r in result.refused for i in range(r.slice.start, r.slice.stop))
    assert len(covered) == len(set(covered))
    assert set(covered) >= bad
    assert result.delivered + len(covered) == size
    assert result.requests == len(sent)


def test_one_member_requests_refuse_exactly_the_bad_members():
    send, sent = partner({3, 7}, status=422)
    result = deliver_in_requests(10, 1, send, split_budget=64)
    assert sorted((part.start, part.stop) for part in sent) == [(i, i + 1) for i in range(10)]
    assert [(r.slice.start, r.slice.stop) for r in result.refused] == [(3, 4), (7, 8)]
    assert result.delivered == 8


def test_a_record_of_one_request_is_sent_whole():
    send, sent = partner(set())
    result = deliver_in_requests(500, 500, send, split_budget=64)
    assert sent == [Slice(0, 500)]
    assert (result.delivered, result.requests) == (500, 1)


def merged_isolations(size: int, send, *, split_budget: int) -> IsolationResult[Result]:
    """One-member requests delivered the general way: each through ``deliver_isolating``, merged in order."""

    async def each() -> list[IsolationResult[Result]]:
        def shifted(start: int):
            return lambda piece: send(Slice(start + piece.start, start + piece.stop))

        return list(
            await asyncio.gather(
                *(deliver_isolating_async(1, shifted(start), split_budget=split_budget) for start in range(size))
            )
        )

    results = asyncio.run(each())
    return IsolationResult(
        delivered=sum(result.delivered for result in results),
        refused=[
            type(r)(Slice(start + r.slice.start, start + r.slice.stop), r.outcome)
            for start, result in enumerate(results)
            for r in result.refused
        ],
        requests=sum(result.requests for result in results),
        first=results[0].first,
    )


@given(st.integers(1, 200), st.data(), st.integers(0, 8))
def test_one_member_requests_end_as_each_isolated_on_its_own_would(size, data, budget):
    statuses = data.draw(
        st.lists(st.sampled_from([200, 201, 400, 401, 413, 422, 429, 500]), min_size=size, max_size=size)
    )

    def partner_of(sent: list[Slice]):
        async def send(part: Slice) -> Result:
            sent.append(part)
            status = statuses[part.start]
            return Result(success=status < 300, status=status)

        return send

    sent: list[Slice] = []
    expected_sent: list[Slice] = []
    result = deliver_in_requests(size, 1, partner_of(sent), split_budget=budget)
    expected = merged_isolations(size, partner_of(expected_sent), split_budget=budget)
    assert result == expected
    assert sent == expected_sent == [Slice(i, i + 1) for i in range(size)]  # each member sent once, in order
