"""Dividing a profile's limits between dispatcher replicas: the shares add up to the limit, and a replica
joining or leaving never lets the replicas together exceed it."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.fleet_limits import FleetLimits
from shared.catalog.fleet_store import ReplicaBeat
from shared.domain.catalog_objects import RateLimit
from shared.domain.limit_shares import ROTATION_SECONDS, effective, in_flight_share, rate_share
from shared.kafka.held_records import HoldRecord


@given(
    st.integers(1, 1000),
    st.lists(st.text("abcdef0123", min_size=1, max_size=8), min_size=1, max_size=20, unique=True),
    st.text(max_size=20),
    st.integers(0, 10_000),
)
def test_the_shares_of_a_view_add_up_to_the_limit_and_differ_by_one_at_most(limit, replicas, profile, turn):
    shares = [in_flight_share(limit, replicas, me, profile, turn) for me in replicas]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1
    assert sum(rate_share(10.0, replicas) for _ in replicas) == pytest.approx(10.0)


def test_the_remainder_moves_from_turn_to_turn():
    replicas = ["a", "b", "c"]
    holders = {turn: [me for me in replicas if in_flight_share(1, replicas, me, "p", turn)] for turn in range(3)}
    assert sorted(h for (h,) in holders.values()) == replicas  # each replica's batches get their turn


def test_a_growing_share_waits_until_every_replica_is_within_the_new_view():
    assert effective(4, 2, all_drained=False) == 2  # shrinking: at once
    assert effective(2, 4, all_drained=False) == 2  # growing: not yet
    assert effective(2, 4, all_drained=True) == 4
    assert effective(None, 3, all_drained=False) == 0  # a newcomer: nothing until the others made room


class _Catalog:
    """The fleet store's heartbeats, in memory: each replica's last beat, live within ``ttl`` of the beat."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[float, str | None]] = {}
        self.ttls: list[float] = []

    def beat(self, replica_id: str, at: float, ttl: float, drained_view: str | None) -> list[ReplicaBeat]:
        self.rows[replica_id] = (at, drained_view)
        self.ttls.append(ttl)
        return [ReplicaBeat(r, v) for r, (beat_at, v) in sorted(self.rows.items()) if beat_at >= at - ttl]

    def leave(self, replica_id: str) -> None:
        self.rows.pop(replica_id)


LIMIT = RateLimit(max_in_flight=4)


def _replica(catalog: _Catalog, name: str) -> FleetLimits:
    return FleetLimits(catalog, replica_id=name, wall_clock=lambda: 1000.0)


def _capacity(replica: FleetLimits) -> int:
    try:
        slots = replica.limits_of("p", LIMIT).slots
    except HoldRecord:
        return 0
    assert slots is not None
    return slots.capacity


def _fill(replica: FleetLimits) -> None:
    """Take every free slot, as requests waiting for them would."""
    try:
        slots = replica.limits_of("p", LIMIT).slots
    except HoldRecord:
        return
    assert slots is not None
    slots.in_use = max(slots.in_use, slots.capacity)


def _in_flight(*replicas: FleetLimits) -> int:
    return sum(r.limits["p"].slots.in_use for r in replicas if "p" in r.limits and r.limits["p"].slots)


def test_a_replica_joining_takes_its_share_only_once_the_other_has_made_room():
    catalog = _Catalog()
    first, second = _replica(catalog, "a"), _replica(catalog, "b")
    asyncio.run(first.beat())
    _fill(first)
    assert _in_flight(first) == 4  # alone, the whole limit

    for _ in range(3):  # the newcomer beats; the first sees it and shrinks, but 4 requests are still out
        asyncio.run(second.beat())
        asyncio.run(first.beat())
        _fill(first)
        _fill(second)
        assert _capacity(first) == 2
        assert _capacity(second) == 0
        assert _in_flight(first, second) <= 4

    first.limits["p"].slots.in_use = 2  # two of its requests came back
    asyncio.run(first.beat())  # within its share of the new view: it says so
    asyncio.run(second.beat())  # every replica within the view: the newcomer takes its share
    _fill(second)
    assert (_capacity(first), _capacity(second)) == (2, 2)
    assert _in_flight(first, second) == 4


def test_a_replica_leaving_gives_its_share_back_to_the_others():
    catalog = _Catalog()
    first, second = _replica(catalog, "a"), _replica(catalog, "b")
    for _ in range(3):  # a view change is acknowledged in the beat after it is seen
        asyncio.run(first.beat())
        asyncio.run(second.beat())
    assert (_capacity(first), _capacity(second)) == (2, 2)
    second.leave()
    asyncio.run(first.beat())
    assert _capacity(first) == 4


def test_a_replica_whose_heartbeat_is_stale_holds_back_until_every_replica_is_within_the_view_again():
    catalog, now = _Catalog(), [0.0]
    first = FleetLimits(catalog, replica_id="a", wall_clock=lambda: 1000.0, clock=lambda: now[0])
    second = _replica(catalog, "b")
    for _ in range(3):
        asyncio.run(first.beat())
        asyncio.run(second.beat())
    assert _capacity(first) == 2
    now[0] += first.ttl_seconds  # no heartbeat answered for a while (the catalog away)
    assert _capacity(first) == 0
    asyncio.run(first.beat())  # back: within the view again, but not sure the other still is
    asyncio.run(second.beat())
    asyncio.run(first.beat())
    assert _capacity(first) == 2


def test_a_replica_that_cannot_beat_holds_its_limited_batches_back():
    lone = _replica(_Catalog(), "a")
    with pytest.raises(HoldRecord):
        lone.limits_of("p", LIMIT)  # never beaten: the others do not know it
    assert FleetLimits(None).limits_of("p", LIMIT).slots.capacity == 4  # no fleet: whole


def test_others_count_a_silent_replica_for_the_ttl_and_the_profiles_timeout_before_taking_its_share():
    catalog, wall = _Catalog(), [1000.0]
    first = FleetLimits(catalog, replica_id="a", ttl_seconds=10, wall_clock=lambda: wall[0])
    second = FleetLimits(catalog, replica_id="b", ttl_seconds=10, wall_clock=lambda: wall[0])
    for _ in range(3):
        asyncio.run(first.beat())
        asyncio.run(second.beat())
        for replica in (first, second):
            with contextlib.suppress(HoldRecord):  # the newcomer's share is 0 until the other made room
                replica.limits_of("p", LIMIT, timeout_seconds=30)
    assert first.limits["p"].slots.capacity == 2
    wall[0] += 15  # b went silent 15 s ago: past the TTL, but an attempt of its may still be out for 30 s
    asyncio.run(first.beat())
    assert catalog.ttls[-1] == 40
    assert _capacity(first) == 2  # b's share is not taken yet
    wall[0] += 26  # 41 s: no attempt of b's can still be out
    asyncio.run(first.beat())
    asyncio.run(first.beat())
    assert _capacity(first) == 4


def test_a_request_is_held_at_its_next_attempt_once_its_replica_may_have_been_counted_out():
    catalog, now = _Catalog(), [0.0]
    replica = FleetLimits(catalog, replica_id="a", ttl_seconds=10, wall_clock=lambda: 1000.0, clock=lambda: now[0])
    asyncio.run(replica.beat())
    replica.limits_of("p", LIMIT)
    replica.before_attempt("p")  # fresh: the attempt goes
    now[0] += 6  # no heartbeat answered for over half the TTL: the others may count it out
    with pytest.raises(HoldRecord):
        replica.before_attempt("p")
    replica.before_attempt("unlimited")  # a profile without limits is not concerned


def test_a_request_is_held_at_its_next_attempt_while_its_replicas_share_is_below_what_it_has_in_flight():
    catalog = _Catalog()
    first, second = _replica(catalog, "a"), _replica(catalog, "b")
    asyncio.run(first.beat())
    _fill(first)  # 4 requests out, retrying
    asyncio.run(second.beat())
    asyncio.run(first.beat())  # b joined: a's share is 2, 4 still out
    assert _capacity(first) == 2
    with pytest.raises(HoldRecord):
        first.before_attempt("p")  # their next attempts give slots back instead of going
    first.limits["p"].slots.in_use = 2
    first.before_attempt("p")


def test_the_turn_of_a_limit_below_the_replicas_moves_on_though_the_holder_retries():
    """max_in_flight 1 between two replicas: the holder's request, retrying, gives its slot back at its next
    attempt once the turn moved on, so the other replica gets the turn instead of it coming back to the holder."""
    catalog, wall = _Catalog(), [0.0]
    one = RateLimit(max_in_flight=1)
    replicas = {name: FleetLimits(catalog, replica_id=name, wall_clock=lambda: wall[0]) for name in ("a", "b")}
    turn = next(t for t in range(10) if in_flight_share(1, ["a", "b"], "a", "p", t) == 1)
    wall[0] = turn * ROTATION_SECONDS
    for _ in range(3):
        for replica in replicas.values():
            asyncio.run(replica.beat())
            with contextlib.suppress(HoldRecord):
                replica.limits_of("p", one)
    holder, other = replicas["a"], replicas["b"]
    slots = holder.limits["p"].slots
    assert slots is not None
    assert slots.capacity == 1
    slots.in_use = 1  # a request out, retrying for minutes

    for _ in range(int(ROTATION_SECONDS // 5)):  # both beating every 5 s until the next turn: b's
        wall[0] += 5
        for replica in (holder, other):
            asyncio.run(replica.beat())
    assert slots.capacity == 0
    with pytest.raises(HoldRecord):
        holder.before_attempt("p")  # its next attempt: held, the slot given back
    slots.in_use = 0
    for replica in (holder, other, holder, other):
        asyncio.run(replica.beat())
    assert other.limits_of("p", one).slots.capacity == 1


def test_the_requests_in_flight_count_against_an_edited_limit():
    lone = FleetLimits(None)
    slots = lone.limits_of("p", RateLimit(max_in_flight=4)).slots
    assert slots is not None
    slots.in_use = 3  # three requests out
    edited = lone.limits_of("p", RateLimit(max_in_flight=2)).slots
    assert edited is not None
    assert (edited.in_use, edited.capacity) == (3, 2)  # no new request until one of the three comes back


class _SlowCatalog(_Catalog):
    """A catalog whose heartbeat write waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.writing, self.finish = threading.Event(), threading.Event()

    def beat(self, replica_id: str, at: float, ttl: float, drained_view: str | None) -> list[ReplicaBeat]:
        self.writing.set()
        assert self.finish.wait(timeout=10)
        return super().beat(replica_id, at, ttl, drained_view)


def test_leaving_waits_for_a_heartbeat_under_way_and_no_heartbeat_writes_after():
    catalog = _SlowCatalog()
    replica = _replica(catalog, "a")
    beating = threading.Thread(target=lambda: asyncio.run(replica.beat()))
    beating.start()
    assert catalog.writing.wait(timeout=10)
    leaving = threading.Thread(target=replica.leave)  # the service stops while a heartbeat is being written
    leaving.start()
    catalog.finish.set()
    beating.join(timeout=10)
    leaving.join(timeout=10)
    assert catalog.rows == {}  # the row written by that heartbeat is deleted, not left to linger for the TTL
    asyncio.run(replica.beat())
    assert catalog.rows == {}


def test_a_rate_share_rebuilt_goes_on_from_the_tokens_spent_instead_of_a_full_burst():
    lone = FleetLimits(None)
    limiter = lone.limits_of("p", RateLimit(requests_per_second=10, burst=5)).rate
    for _ in range(5):
        assert limiter.reserve(100.0) == 0  # the burst, spent
    edited = lone.limits_of("p", RateLimit(requests_per_second=20, burst=5)).rate
    assert edited.reserve(100.0) == pytest.approx(1 / 20)  # the next token at the new rate, not a new burst
