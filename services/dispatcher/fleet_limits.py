"""A profile's limits held across every dispatcher replica: each replica applies its share.

The replicas beat in the catalog every ``heartbeat_seconds`` (:class:`shared.catalog.fleet_store.SqlFleetStore`)
and divide each profile's ``max_in_flight`` and ``requests_per_second`` between the live ones
(:mod:`shared.domain.limit_shares`). A request to a limited profile takes one of this replica's slots of the
profile (waiting while they are all taken) and a token of its rate share. A replica whose share of a
profile is 0 (a limit below the number of replicas, until its turn comes), or whose last heartbeat is older
than half the TTL (it may have been counted out by the others), holds the batch back
(:class:`shared.kafka.held_records.HoldRecord`) rather than overshoot: it is handed back a heartbeat later.
The same holds before every attempt, retries included (:meth:`FleetLimits.before_attempt`), and a request
whose replica's share dropped below what it has in flight gives its slot back there; the others count a
silent replica for the TTL plus the longest request timeout before taking its share.

Why quotas and not a lease per request: measured by ``tests/benchmarks/bench_fleet_limits.py`` (README).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from services.dispatcher.rate_limit import AdaptiveRateLimiter, LearnedRateLimit
from services.dispatcher.round_admission import RoundOver
from shared.application.ports import FleetHeartbeats
from shared.domain.catalog_objects import RateLimit
from shared.domain.fleet import ReplicaBeat
from shared.domain.limit_shares import (
    burst_share,
    effective,
    in_flight_share,
    rate_share,
    rotation_turn,
    view_of,
)
from shared.kafka.held_records import HoldRecord

log = structlog.get_logger(__name__)

#: How long a batch held for want of a share waits at least before it is tried again (seconds; else a heartbeat).
SHARE_WAIT_SECONDS = 1.0

_READS = itertools.count(1)


def read_stamp() -> int:
    """The order of a profile's config read now, in this process (the dispatcher's catalog cache stamps each object
    it reads from the catalog): a config read later is at least as new, since reads are made one at a time and each
    sees every edit committed before it. Not the catalog's version, which starts again at 1 for a profile deleted and
    created again, nor its ``updated_at``, the clock of whichever process wrote it."""
    return next(_READS)


#: Who holds a timeout given without a holder (:meth:`FleetLimits.limits_of`): the profile's standing one, kept.
_STANDING = object()


def _standing() -> object:
    return _STANDING


class _Waiter:
    """A request waiting for a slot, in its place in the queue until it is handed a slot or leaves."""

    __slots__ = ("future", "gone", "handed")

    def __init__(self, future: asyncio.Future[None]) -> None:
        #: Done when the request is to look again: handed a slot, or the capacity dropped to 0 (a new one if it waits
        #: on: the capacity back before it looked).
        self.future = future
        self.handed = False  # a slot handed (counted in ``in_use``)
        self.gone = False  # left (held back, its round over, cancelled): skipped


class Slots:
    """A bound on requests in flight whose capacity may change while requests hold or wait for a slot.

    A slot given back goes to the request that has waited longest (each waiter has a future of its own: one wake-up
    a slot, not one per waiter); the capacity lowered (an edited ``max_in_flight``, a smaller fleet share), the
    requests in flight keep counting until they give their slots back, and none is handed while they do not fit.
    The capacity dropped to 0 wakes every waiter (its batch is held back); one whose capacity is back before it looks
    keeps its place in the queue, ahead of the requests that came after it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        #: The requests waiting, first come first (one that left is skipped when its turn comes).
        self._waiters: deque[_Waiter] = deque()

    @contextlib.asynccontextmanager
    async def taken(
        self, held: Callable[[], HoldRecord], left: Callable[[], float] | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot for the block (:meth:`take`, then :meth:`give`)."""
        await self.take(held, left)
        try:
            yield
        finally:
            self.give()

    async def take(
        self,
        held: Callable[[], HoldRecord],
        left: Callable[[], float] | None = None,
        aside: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
    ) -> None:
        """Take a slot (:meth:`give` it back); raise ``held()`` when the capacity drops to 0 while waiting, and
        ``RoundOver`` once ``left()`` (the seconds left to the request's round) is 0 while waiting. ``aside`` awaits
        the wait, when there is one (the dispatcher's: the request holds no worker while it waits)."""
        if self.in_use < self.capacity:  # a free slot: no wait, no coroutine (no one waits while one is free)
            self.in_use += 1
            return
        taken = [False]
        try:
            if aside is None:
                await self._wait(held, left, taken)
            else:
                await aside(self._wait(held, left, taken))
        except BaseException:
            if taken[0]:  # taken, then cancelled while waiting for a worker again: the slot is free again
                self.give()
            raise

    async def _wait(self, held: Callable[[], HoldRecord], left: Callable[[], float] | None, taken: list[bool]) -> None:
        waiter: _Waiter | None = None
        try:
            while True:
                if waiter is not None and waiter.handed:  # handed a slot by give() or resize()
                    taken[0] = True
                    return
                if self.capacity <= 0:
                    raise held()
                if waiter is None and self.in_use < self.capacity:
                    self.in_use += 1
                    taken[0] = True
                    return
                wait = SHARE_WAIT_SECONDS
                if left is not None:
                    seconds = left()
                    if seconds <= 0:
                        raise RoundOver(time.monotonic())
                    wait = min(wait, seconds)
                if waiter is None:
                    waiter = _Waiter(asyncio.get_running_loop().create_future())
                    self._waiters.append(waiter)
                elif waiter.future.done():  # woken by the capacity's drop to 0, back since: it waits in its place
                    waiter.future = asyncio.get_running_loop().create_future()
                await asyncio.wait((waiter.future,), timeout=wait)  # its place kept across the looks (the round's end)
        except BaseException:
            if waiter is not None:
                waiter.gone = True  # skipped by the next give()
                if waiter.handed and not taken[0]:
                    self.give()  # handed a slot as it left: the next waiter's
            raise

    def give(self) -> None:
        """Give a slot :meth:`take` took back: to the first request waiting, if it fits."""
        self.in_use -= 1
        if self._waiters:
            self._hand()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        if capacity <= 0:  # every waiter looks again: it raises its hold, unless the capacity is back by then
            for waiter in self._waiters:
                if not waiter.future.done():
                    waiter.future.set_result(None)
        elif self._waiters:
            self._hand()

    def _hand(self) -> None:
        """The free slots to the requests waiting longest."""
        waiters = self._waiters
        while waiters and self.in_use < self.capacity:
            waiter = waiters.popleft()
            if not waiter.gone:
                self.in_use += 1
                waiter.handed = True
                if not waiter.future.done():  # else woken already (to look again): it finds the slot handed
                    waiter.future.set_result(None)


def _limiter(current: AdaptiveRateLimiter | LearnedRateLimit, rate: float, burst: float) -> AdaptiveRateLimiter:
    """A limiter at ``rate``, continuing ``current`` when it was one (not starting with a full burst)."""
    if isinstance(current, AdaptiveRateLimiter):
        return current.resized(rate, burst)
    return AdaptiveRateLimiter(rate, burst)


@dataclass
class ProfileLimits:
    """One profile's limits in this replica: its rate limiter and in-flight slots, at this replica's share.

    Without a configured rate, the rate is learned from the partner's 429s (and dropped again); without a
    ``max_in_flight``, requests are not bounded per profile.
    """

    config: RateLimit | None
    rate: AdaptiveRateLimiter | LearnedRateLimit = field(default_factory=LearnedRateLimit)
    slots: Slots | None = None
    #: The shares applied (None: never applied).
    in_flight_applied: float | None = None
    rate_applied: float | None = None
    #: The view (and whether every replica was within it) the shares were computed for.
    applied: tuple[str, bool] | None = None
    #: When ``config`` was read (:func:`read_stamp`): a config read before it never replaces it.
    read: int = 0

    def __post_init__(self) -> None:
        if self.config is not None and self.config.max_in_flight is not None:
            self.slots = Slots(self.config.max_in_flight)
            self.in_flight_applied = self.config.max_in_flight
        if self.config is not None and self.config.requests_per_second is not None:
            self.rate = AdaptiveRateLimiter(self.config.requests_per_second, float(self.config.burst))
            self.rate_applied = self.config.requests_per_second

    @contextlib.asynccontextmanager
    async def in_flight(
        self, held: Callable[[], HoldRecord], left: Callable[[], float] | None = None
    ) -> AsyncIterator[None]:
        """One request's slot (none needed without ``max_in_flight``), waited for until its round's end at most
        (``left``: :meth:`Slots.taken`)."""
        if self.slots is None:
            yield
            return
        async with self.slots.taken(held, left):
            yield

    @property
    def limited(self) -> bool:
        return self.config is not None


@dataclass
class _View:
    replicas: tuple[str, ...]
    view: str
    turn: int
    all_drained: bool
    fresh_until: float


class FleetLimits:
    """This replica's membership of the dispatcher fleet, and its share of every profile's limits.

    ``store`` None: a lone dispatcher (tests, a single replica by configuration) applies whole limits.
    """

    def __init__(
        self,
        store: FleetHeartbeats | None,
        *,
        heartbeat_seconds: float = 2.0,
        ttl_seconds: float = 10.0,
        replica_id: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.heartbeat_seconds, self.ttl_seconds = heartbeat_seconds, ttl_seconds
        self.replica_id = replica_id or uuid.uuid4().hex
        self.wall_clock, self.clock = wall_clock, clock
        self._view: _View | None = None
        #: Per limited profile, the request timeouts its attempts may run with, by who holds each (the profile read
        #: by batches, weakly: ``id`` -> (its reference, its timeout)): others count a silent replica for as long again.
        self._timeouts: dict[str, dict[int, tuple[Callable[[], object | None], float]]] = {}
        self._store_lock = threading.Lock()  # a beat (worker thread) and leave (main thread) one at a time
        self._left = False
        #: The profiles' limits this replica knows (the dispatcher's, by profile name).
        self.limits: dict[str, ProfileLimits] = {}

    def limits_of(
        self,
        name: str,
        config: RateLimit | None,
        timeout_seconds: float = 0.0,
        read: int | None = None,
        holder: object | None = None,
    ) -> ProfileLimits:
        """The profile's limits at this replica's current share; raises the batch's hold when the share is 0.
        ``timeout_seconds``: the request timeout of the caller's attempts (how long one may outlast a heartbeat), for
        as long as ``holder`` lives (the profile object its batch holds: its attempts use that timeout; None: until
        the next call without a holder); ``read``: when ``config`` was read (:func:`read_stamp`; None: now). The
        newest config read wins: a batch holding a config read before the one the limits follow (read before an edit,
        its requests overlapping those of batches read after it) is given the current limits, which are not rebuilt
        back to the edited-away config. Not so the timeouts (:attr:`live_seconds`): each attempt still out, or still to
        begin, runs with the one its batch read."""
        if config is not None and self.store is not None:  # a lone dispatcher tells no one how long it is live
            self._cover(name, timeout_seconds, _STANDING if holder is None else holder)
        if read is None:
            read = read_stamp()
        known = self.limits.get(name)
        if known is not None and read < known.read:
            config = known.config  # read before the config the limits follow: the newer one stands
        # The catalog cache hands the same object until it expires: identity first, equality only then.
        elif known is None or (known.config is not config and known.config != config):
            previous, known = known, ProfileLimits(config)
            self.limits[name] = known
            if previous is not None and isinstance(known.rate, AdaptiveRateLimiter):
                known.rate = _limiter(previous.rate, known.rate.max_rate, known.rate.burst)
            if previous is not None and previous.slots is not None and known.slots is not None:
                # The limit edited: the requests in flight hold slots of the old one; they keep counting.
                previous.slots.resize(known.slots.capacity)
                known.slots = previous.slots
            if self.store is not None and config is not None:
                known.in_flight_applied = known.rate_applied = None  # nothing applied yet: see effective()
        known.read = max(known.read, read)
        if self.store is not None and config is not None:
            self._apply(name, known)
        return known

    def _cover(self, name: str, timeout_seconds: float, holder: object) -> None:
        """Count ``timeout_seconds`` in :attr:`live_seconds` while ``holder`` lives (already counted: nothing to do)."""
        covered = self._timeouts.get(name)
        if covered is None:
            covered = self._timeouts[name] = {}
        known = covered.get(id(holder))
        if known is not None and known[0]() is holder and known[1] == timeout_seconds:
            return
        for key, (ref, _) in list(covered.items()):  # once a new holder (an edit, the cache's next read): few
            if ref() is None:
                del covered[key]
        covered[id(holder)] = (_standing if holder is _STANDING else weakref.ref(holder), timeout_seconds)

    def rate_of(self, name: str, known: ProfileLimits) -> AdaptiveRateLimiter | LearnedRateLimit:
        """Profile ``name``'s rate limiter now (``known``'s until the profile is known here): rebuilt when its limit is
        edited or this replica's share changes, so a request that waited asks this one, not the one it began with."""
        current = self.limits.get(name)
        return (known if current is None else current).rate

    def held(self, name: str) -> HoldRecord:
        """The hold of a batch while this replica's share of the profile is 0: until the next heartbeat, the
        first moment the share may have changed (a batch handed back sooner would be held again at once)."""
        return HoldRecord(
            f"this dispatcher's share of connection profile {name!r}'s limits is 0 for now: the batch waits",
            self.clock() + max(SHARE_WAIT_SECONDS, self.heartbeat_seconds),
        )

    def _targets(self, name: str, config: RateLimit, view: _View) -> tuple[int | None, float | None, int]:
        flights = None
        if config.max_in_flight is not None:
            flights = in_flight_share(config.max_in_flight, view.replicas, self.replica_id, name, view.turn)
        rate = rate_share(config.requests_per_second, view.replicas) if config.requests_per_second else None
        return flights, rate, burst_share(config.burst, view.replicas)

    def _apply(self, name: str, limits: ProfileLimits) -> None:
        view = self._view
        assert limits.config is not None
        if view is None or self.clock() > view.fresh_until:
            # Not (or no longer) known to the others, who may have counted it out: no share to take, and none
            # to keep once it beats again until every replica is within the view then (effective()).
            if limits.slots is not None:
                limits.slots.resize(0)
                limits.in_flight_applied = 0
            if limits.config.requests_per_second is not None:
                limits.rate_applied = 0
            limits.applied = None
            raise self.held(name)
        if limits.applied != (view.view, view.all_drained):
            flights, rate, burst = self._targets(name, limits.config, view)
            if flights is not None:
                share = int(effective(limits.in_flight_applied, flights, view.all_drained))
                limits.in_flight_applied = share
                if limits.slots is None:
                    limits.slots = Slots(share)
                limits.slots.resize(share)
            if rate is not None:
                share_rate = effective(limits.rate_applied, rate, view.all_drained)
                if share_rate > 0 and share_rate != limits.rate_applied:
                    limits.rate = _limiter(limits.rate, share_rate, float(burst))
                limits.rate_applied = share_rate
            limits.applied = (view.view, view.all_drained)
        if limits.in_flight_applied == 0 or limits.rate_applied == 0:
            raise self.held(name)

    def _drained(self, view: _View) -> bool:
        """Whether this replica is within its share of ``view`` for every profile it knows."""
        for name, limits in list(self.limits.items()):
            if limits.config is None or limits.slots is None:
                continue
            flights, _, _ = self._targets(name, limits.config, view)
            if flights is not None and limits.slots.in_use > flights:
                return False
        return True

    async def beat(self) -> bool:
        """One heartbeat: say which view this replica is within, read the live replicas, apply the new view.
        True when the view changed (the next beat had better come at once: it acknowledges the new view)."""
        assert self.store is not None
        current = self._view
        drained = current.view if current is not None and self._drained(current) else None
        now = self.wall_clock()
        started = self.clock()
        # How long to be counted, read here: the event loop's requests change what it is made of.
        beats = await asyncio.to_thread(self._beat, now, drained, self.live_seconds)
        replicas = tuple(sorted(beat.replica_id for beat in beats))
        if self.replica_id not in replicas:  # left, or a stopped clock
            return False
        turn = rotation_turn(now)
        view = view_of(replicas, turn)
        all_drained = all(beat.drained_view == view for beat in beats if beat.replica_id != self.replica_id)
        if current is None or current.view != view:
            log.info("dispatcher fleet", replicas=len(replicas), view=view, all_drained=all_drained)
        self._view = _View(replicas, view, turn, all_drained, started + self.ttl_seconds / 2)
        for name, limits in list(self.limits.items()):
            if limits.config is not None:
                with contextlib.suppress(HoldRecord):
                    self._apply(name, limits)
        return current is None or current.view != view

    async def run(self) -> None:
        """Beat every ``heartbeat_seconds`` until cancelled (a failed beat is logged; the next one tries again)."""
        if self.store is None:
            return
        while True:
            changed = False
            try:
                changed = await self.beat()
            except Exception as exc:  # noqa: BLE001 - the catalog away: shares go to 0 once the view is stale
                log.warning("dispatcher heartbeat failed", error=f"{type(exc).__name__}: {exc}")
            # A new view is acknowledged at the next beat: soon, so that the others may take their shares.
            await asyncio.sleep(self.heartbeat_seconds / 10 if changed else self.heartbeat_seconds)

    @property
    def live_seconds(self) -> float:
        """How long a silent replica is still counted (its share kept from the others): the TTL, and the longest
        request timeout of the limited profiles, since an attempt started just before the replica went stale
        (it starts none after: :meth:`before_attempt`) may last that long. The longest of every batch whose attempts
        may still be out or begin (its profile read before or after an edit of the timeout), not the last one seen:
        a batch's profile lives as long as it has an attempt out or to come, and no longer counts once gone."""
        longest = 0.0
        for covered in list(self._timeouts.values()):
            for ref, timeout in list(covered.values()):
                if timeout > longest and ref() is not None:
                    longest = timeout
        return self.ttl_seconds + longest

    def before_attempt(self, name: str) -> None:
        """Raise the batch's hold before an attempt (a retry included) when this replica may have been counted
        out by the others (its view stale), or its share of the profile's requests in flight dropped below what
        it has in flight (this one gives its slot back): requests held across retries never overshoot."""
        limits = self.limits.get(name)
        if self.store is None or limits is None or limits.config is None:
            return
        view = self._view
        if view is None or self.clock() > view.fresh_until:
            raise self.held(name)
        if limits.slots is not None and limits.slots.in_use > limits.slots.capacity:
            raise self.held(name)

    def _beat(self, now: float, drained: str | None, live_seconds: float) -> list[ReplicaBeat]:
        """The catalog side of a heartbeat (on a worker thread); nothing once this replica has left."""
        assert self.store is not None
        with self._store_lock:
            return [] if self._left else self.store.beat(self.replica_id, now, live_seconds, drained)

    def leave(self) -> None:
        """Remove this replica's row (on stop): the others take its share at their next heartbeat. A beat under
        way is waited for (it would write the row again), and no beat writes it after."""
        if self.store is None:
            return
        try:
            with self._store_lock:
                self._left = True
                self.store.leave(self.replica_id)
        except Exception as exc:  # noqa: BLE001 - the catalog away: the row expires after the TTL instead
            log.warning("dispatcher could not leave the fleet", error=f"{type(exc).__name__}: {exc}")
