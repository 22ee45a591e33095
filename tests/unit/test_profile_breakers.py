"""The dispatcher's breakers per profile: waiting for probes, rebuilding on edit, cancelling (injected clock)."""

from __future__ import annotations

import asyncio

import pytest

from services.dispatcher.breakers import Admission, ProfileBreakers
from services.dispatcher.delivery import AttemptResult
from services.dispatcher.fleet_limits import read_stamp
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.circuit_breaker import BreakerState
from shared.kafka.held_records import HoldRecord

BREAKER = {"minimum_requests": 2, "failure_rate": 0.5, "window_seconds": 30, "open_seconds": 5, "half_open_probes": 1}
FAILED = AttemptResult(status=503, success=False)
OK = AttemptResult(status=200, success=True)
#: Longer than any wait in these tests once fixed; a waiter that never ends fails them instead of hanging.
DEADLINE = 5.0


def _profile(**breaker: float) -> ConnectionProfile:
    return ConnectionProfile(name="p", base_url="http://127.0.0.1:9", circuit_breaker={**BREAKER, **breaker})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _half_open_with_its_probe_out(
    breakers: ProfileBreakers, clock: Clock, profile: ConnectionProfile
) -> Admission:
    """Open ``profile``'s breaker, let its time run out, and take its one probe."""
    breakers.record(profile, await breakers.admit(profile), FAILED)  # 1 failure: fewer than minimum_requests
    with pytest.raises(HoldRecord):
        breakers.record(profile, await breakers.admit(profile), FAILED)  # 2 of 2 failed: open
    clock.now += 5
    probe = await breakers.admit(profile)
    assert probe is not None
    assert probe.ticket.probe
    return probe


def test_an_attempt_waiting_for_a_probe_is_admitted_by_the_breaker_of_the_edited_profile():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock)
        before = _profile()
        probe = await _half_open_with_its_probe_out(breakers, clock, before)
        waiter = asyncio.ensure_future(breakers.admit(before))  # every probe out: it waits
        await asyncio.sleep(0)  # let it start waiting (a scheduling step, no time passes)
        assert not waiter.done()

        edited = _profile(open_seconds=60)
        breakers.check(edited)  # a later batch reads the edited profile: a new breaker, closed
        admission = await asyncio.wait_for(waiter, DEADLINE)
        assert admission is not None
        assert not admission.ticket.probe

        breakers.record(before, probe, OK)  # the old probe comes back: judged by the old breaker, harmlessly
        assert breakers._entries["p"].breaker.state is BreakerState.CLOSED

    asyncio.run(scenario())


def test_a_batch_read_before_an_edit_meets_the_edited_breaker_open_and_does_not_rebuild_it_closed():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock)
        old, old_read = _profile(), read_stamp()  # a batch reads the profile...
        edited, edited_read = _profile(open_seconds=60), read_stamp()  # ...a later one reads it edited
        breakers.record(edited, await breakers.admit(edited, read=edited_read), FAILED)
        with pytest.raises(HoldRecord):
            breakers.record(edited, await breakers.admit(edited, read=edited_read), FAILED)  # open for 60 s
        clock.now += 10  # past the old settings' 5 s open, within the edited 60 s
        for _ in range(3):  # the earlier batch's requests go on while the later batch's do
            with pytest.raises(HoldRecord):
                breakers.check(old, old_read)
            with pytest.raises(HoldRecord):
                await breakers.admit(old, read=old_read)
            with pytest.raises(HoldRecord):
                breakers.check(edited, edited_read)
        assert breakers._entries["p"].settings == edited.circuit_breaker

    asyncio.run(scenario())


def test_a_batch_read_before_a_breaker_is_removed_goes_without_one_and_does_not_bring_it_back():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock)
        old, old_read = _profile(), read_stamp()
        plain = ConnectionProfile(name="p", base_url="http://127.0.0.1:9")
        breakers.check(plain, read_stamp())  # a later batch reads it without a breaker
        assert await breakers.admit(old, read=old_read) is None
        breakers.check(old, old_read)
        assert not breakers.knows("p")

    asyncio.run(scenario())


def test_an_attempt_waiting_for_a_probe_goes_without_a_breaker_once_it_is_removed():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock)
        profile = _profile()
        await _half_open_with_its_probe_out(breakers, clock, profile)
        waiter = asyncio.ensure_future(breakers.admit(profile))
        await asyncio.sleep(0)
        breakers.check(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))  # no breaker any more
        assert await asyncio.wait_for(waiter, DEADLINE) is None

    asyncio.run(scenario())


def test_a_cancelled_probe_lets_a_waiting_attempt_probe_in_its_place():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock)
        profile = _profile()
        probe = await _half_open_with_its_probe_out(breakers, clock, profile)
        waiter = asyncio.ensure_future(breakers.admit(profile))
        await asyncio.sleep(0)
        breakers.cancel(profile, probe)  # the batch was abandoned: its probe never went
        admission = await asyncio.wait_for(waiter, DEADLINE)
        assert admission is not None
        assert admission.ticket.probe

    asyncio.run(scenario())


def test_an_attempt_does_not_wait_for_probes_longer_than_its_bound():
    async def scenario() -> None:
        clock = Clock()
        breakers = ProfileBreakers(clock=clock, max_wait_seconds=0)
        profile = _profile()
        await _half_open_with_its_probe_out(breakers, clock, profile)
        with pytest.raises(HoldRecord) as held:
            await asyncio.wait_for(breakers.admit(profile), DEADLINE)  # the probe never comes back
        assert held.value.until > clock.now  # its batch is held back, handed back later

    asyncio.run(scenario())


def test_a_probe_of_a_retired_breaker_failing_neither_holds_its_batch_nor_reopens_anything():
    async def scenario() -> None:
        clock = Clock()
        changes: list[tuple[str, BreakerState]] = []
        breakers = ProfileBreakers(clock=clock, on_change=lambda name, t: changes.append((name, t.after)))
        before = _profile()
        probe = await _half_open_with_its_probe_out(breakers, clock, before)
        breakers.check(_profile(open_seconds=60))  # edited: a new breaker, closed (the old one is retired)
        assert changes[-1] == ("p", BreakerState.CLOSED)
        changes.clear()
        breakers.record(before, probe, FAILED)  # the old probe fails: no hold, no opening told
        assert changes == []
        assert breakers._entries["p"].breaker.state is BreakerState.CLOSED

    asyncio.run(scenario())
