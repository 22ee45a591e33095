"""Which runs the scheduler publishes ahead of their instant (the lookahead window), across ticks and restarts.

The scheduler runs against in-memory stores that keep its state as the catalog does (compare-and-set advances),
driven by a manual clock with irregular ticks; a restart is a new scheduler on the same stores, a crash one that
published a tick's runs but could not record them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.clock import ManualClock
from services.scheduler.planning import scheduled_run_id
from services.scheduler.scheduling import Scheduler
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule import fire_times
from shared.domain.schedule_state import DueSchedule, FiringMark, ScheduleAdvance, ScheduleState, ScheduleSync
from shared.events import RUN_EVENT_ADAPTER, RunMissed, RunRequested, RunSkipped
from shared.kafka import Outgoing
from shared.topics import Topics

UTC = dt.UTC
T0 = dt.datetime(2026, 10, 24, 23, 58, 30, tzinfo=UTC)  # Paris leaves summer time the next night
SCHEDULES: dict[str, dict[str, object]] = {
    "every-minute": {"cron": "* * * * *"},
    "quarter-hour": {"repeat": {"every": "15min"}},
    "paris-daily": {"repeat": {"every": "day", "time": "02:30"}},  # 02:30 happens twice that night: fires once
    "once": {"once": {"date": "2026-10-25", "time": "02:10"}},
}


def definition(name: str, **schedule: object) -> ExportDefinition:
    return ExportDefinition.model_validate(
        {
            "name": name,
            "query": "q",
            "template": "t",
            "schedule": {"enabled": True, "timezone": "Europe/Paris", **SCHEDULES[name], **schedule},
        }
    )


class Crash(Exception):
    """The scheduler died after publishing a tick's runs, before recording them."""


class MemoryStores:
    """The scheduling store, the definitions and the runs, in memory, as the scheduler uses them."""

    def __init__(self, definitions: list[ExportDefinition], updated_at: dt.datetime) -> None:
        self.definitions = {uuid.uuid5(uuid.NAMESPACE_DNS, d.name): d for d in definitions}
        self.versions = dict.fromkeys(self.definitions, 1)
        self.updated_at = dict.fromkeys(self.definitions, updated_at)
        self.states: dict[uuid.UUID, ScheduleState] = {}
        self.firing: dict[uuid.UUID, dt.datetime] = {}
        self.crash_next_advance = False
        self.active: dict[str, uuid.UUID] = {}

    def edit(self, name: str, definition: ExportDefinition, at: dt.datetime) -> None:
        [definition_id] = [i for i, d in self.definitions.items() if d.name == name]
        self.definitions[definition_id] = definition
        self.versions[definition_id] += 1
        self.updated_at[definition_id] = at

    # SchedulingStore
    def schedules_to_sync(self) -> list[ScheduleSync]:
        return [
            ScheduleSync(i, d, self.versions[i], self.updated_at[i], state.handled_until if state else None)
            for i, d in self.definitions.items()
            if (state := self.states.get(i)) is None or state.version != self.versions[i]
        ]

    def schedules_without_next(self) -> list[ScheduleSync]:
        return [
            ScheduleSync(i, self.definitions[i], s.version, self.updated_at[i], s.handled_until)
            for i, s in self.states.items()
            if s.next_due_at is None and s.not_computable is None and s.version == self.versions[i]
        ]

    def save_schedules(self, states: list[ScheduleState]) -> None:
        self.states.update({s.definition_id: s for s in states})
        for s in states:
            self.firing.pop(s.definition_id, None)

    def scheduled_count(self) -> int:
        return sum(1 for s in self.states.values() if s.next_due_at is not None)

    def not_computable_count(self) -> int:
        return sum(1 for i, s in self.states.items() if s.not_computable and s.version == self.versions[i])

    def mark_firing(self, marks: list[FiringMark]) -> None:
        for mark in marks:
            if self.states[mark.definition_id].handled_until == mark.expected_handled_until:
                self.firing[mark.definition_id] = mark.instant

    def due_schedules(self, at: dt.datetime, limit: int = 10_000) -> list[DueSchedule]:
        due = [
            DueSchedule(i, self.definitions[i], s.handled_until, s.next_due_at, self.firing.get(i))
            for i, s in self.states.items()
            if s.next_due_at is not None and s.next_due_at <= at and s.version == self.versions[i]
        ]
        return sorted(due, key=lambda d: d.next_due_at)[:limit]

    def advance_schedules(self, advances: list[ScheduleAdvance]) -> int:
        if self.crash_next_advance:
            self.crash_next_advance = False
            raise Crash
        moved = 0
        for advance in advances:
            state = self.states[advance.definition_id]
            if state.handled_until == advance.expected_handled_until:
                self.states[advance.definition_id] = replace(
                    state,
                    handled_until=advance.handled_until,
                    next_due_at=advance.next_due_at,
                    not_computable=advance.not_computable,
                )
                self.firing.pop(advance.definition_id, None)
                moved += 1
        return moved

    def acquire_lease(self, name: str, holder: str, at: dt.datetime, ttl_seconds: float) -> bool:
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Nothing to release: one replica."""

    # DefinitionsChanges
    def definitions_fingerprint(self) -> tuple[int, int, dt.datetime | None]:
        return len(self.versions), sum(self.versions.values()), max(self.updated_at.values())

    def list_objects(self, kind: type[ExportDefinition]) -> list[ExportDefinition]:
        return list(self.definitions.values())

    # ActiveRuns
    def active_runs(self, definitions: list[str]) -> dict[str, uuid.UUID]:
        return {name: run for name, run in self.active.items() if name in definitions}

    def withhold_start(self, run_id: uuid.UUID, definition: str, active: uuid.UUID) -> bool:
        return True  # no extractor here: a run published is never claimed

    def withheld_runs(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        return {}  # none kept: withhold_start keeps nothing


class Published:
    """What the schedulers published: (clock time, kind, definition, instant, run id, requested at) each."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.records: list[tuple[dt.datetime, str, str, dt.datetime, uuid.UUID, dt.datetime | None]] = []
        #: The definition id each run request names (what the extractor judges a run published ahead against).
        self.definition_ids: dict[uuid.UUID, uuid.UUID | None] = {}

    def __call__(self, outgoing: list[Outgoing]) -> None:
        for record in outgoing:
            if record.topic.endswith("requests"):
                request = RunRequested.model_validate_json(record.value)
                assert request.scheduled_for is not None
                fired = ("fired", request.definition, request.scheduled_for, request.run_id, request.requested_at)
                self.definition_ids[request.run_id] = request.definition_id
                self.records.append((self.clock.now(), *fired))
            else:
                event = RUN_EVENT_ADAPTER.validate_json(record.value)
                assert isinstance(event, RunMissed | RunSkipped)
                kind = "missed" if isinstance(event, RunMissed) else "skipped"
                self.records.append((self.clock.now(), kind, event.definition, event.scheduled_for, event.run_id, None))


def scheduler(stores: MemoryStores, clock: ManualClock, published: Published, lookahead: float) -> Scheduler:
    return Scheduler(
        scheduling=stores,
        definitions=stores,
        runs=stores,
        clock=clock,
        topics=Topics("x."),
        publish=published,
        lookahead=dt.timedelta(seconds=lookahead),
        catch_up=dt.timedelta(hours=1),
    )


ticks = st.lists(
    st.tuples(
        st.floats(0.05, 75, allow_nan=False),  # seconds to the next tick (a slow tick, a pause, a restart)
        # "down": a crash whose replacement comes back after the catch-up window (1 h), 70 minutes later.
        st.sampled_from(["tick", "tick", "tick", "restart", "crash", "down"]),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(lookahead=st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0]), steps=ticks)
def test_every_instant_is_published_once_no_earlier_than_the_lookahead_and_a_crash_repeats_only_run_ids(
    lookahead: float, steps: list[tuple[float, str]]
):
    definitions = [definition(name) for name in SCHEDULES]
    stores = MemoryStores(definitions, updated_at=T0)
    clock = ManualClock(T0)
    published = Published(clock)
    current = scheduler(stores, clock, published, lookahead)
    current.tick()
    crashed_ticks: list[dt.datetime] = []
    for seconds, event in steps:
        clock.advance(dt.timedelta(seconds=seconds))
        if event == "restart":
            current = scheduler(stores, clock, published, lookahead)
        stores.crash_next_advance = event in {"crash", "down"}
        try:
            current.tick()
        except Crash:
            crashed_ticks.append(clock.now())
            current = scheduler(stores, clock, published, lookahead)  # the replacement process
            if event == "down":  # back past the catch-up window (fewer than 100 instants missed: all listed)
                clock.advance(dt.timedelta(minutes=70))
                current.tick()
    end = clock.now()

    window = dt.timedelta(seconds=lookahead)
    expected = {(d.name, due) for d in definitions for due in fire_times(d.schedule, T0, end)}
    accounted = Counter((definition, due) for _, _, definition, due, _, _ in published.records)
    # Every instant due by the last tick was fired or recorded missed; none beyond the last tick's window was.
    assert expected <= set(accounted)
    assert all(due <= end + window for _, due in accounted)
    for when, kind, name, due, run_id, requested_at in published.records:
        definition_id = uuid.uuid5(uuid.NAMESPACE_DNS, name)
        assert run_id == scheduled_run_id(definition_id, due)
        if kind == "fired":
            assert published.definition_ids[run_id] == definition_id
            assert due - when <= window, "published further ahead than the lookahead"
            assert requested_at == when  # by the scheduler's clock: before the instant when published ahead
        else:
            assert due < when, "recorded missed before it was due"
    # An instant is published again only after a tick that crashed before recording it: the same run id.
    for key in accounted:
        times = [when for when, _, name, due, _, _ in published.records if (name, due) == key]
        assert set(times[:-1]) <= set(crashed_ticks)
    # A run requested is never also recorded missed (it may have run), however long the scheduler was down after.
    kinds = {key: {kind for _, kind, name, due, _, _ in published.records if (name, due) == key} for key in accounted}
    assert [key for key, seen in kinds.items() if {"fired", "missed"} <= seen] == []


def test_a_burst_due_within_the_lookahead_is_published_in_one_tick_with_its_instant():
    start = dt.datetime(2026, 10, 25, 0, 14, 0, tzinfo=UTC)
    aligned = [definition("quarter-hour").model_copy(update={"name": f"aligned-{i}"}) for i in range(50)]
    stores = MemoryStores(aligned, updated_at=start)
    clock = ManualClock(start)
    published = Published(clock)
    current = scheduler(stores, clock, published, lookahead=10)
    current.tick()  # first sight: 00:15 (Paris 02:15) is 60 s away
    clock.advance(dt.timedelta(seconds=49, milliseconds=500))
    current.tick()  # 10.5 s before the instant: outside the window
    assert published.records == []
    clock.advance(dt.timedelta(seconds=1))
    current.tick()
    instant = dt.datetime(2026, 10, 25, 0, 15, tzinfo=UTC)
    assert [due for _, _, _, due, _, _ in published.records] == [instant] * 50
    assert {requested_at for *_, requested_at in published.records} == {instant - dt.timedelta(seconds=9.5)}
    for _ in range(20):
        clock.advance(dt.timedelta(seconds=1))
        current.tick()
    assert len(published.records) == 50, "published again after its instant"


@pytest.mark.parametrize("lookahead", [0.0, 10.0])
def test_an_edit_inside_the_window_does_not_fire_the_instant_again(lookahead: float):
    start = dt.datetime(2026, 10, 25, 0, 14, 55, tzinfo=UTC)
    stores = MemoryStores([definition("quarter-hour")], updated_at=start)
    clock = ManualClock(start)
    published = Published(clock)
    current = scheduler(stores, clock, published, lookahead)
    current.tick()
    clock.advance(dt.timedelta(seconds=2))
    stores.edit("quarter-hour", definition("quarter-hour", overlap="allow"), at=clock.now())
    for _ in range(10):
        clock.advance(dt.timedelta(seconds=1))
        current.tick()
    assert [due for _, _, _, due, _, _ in published.records] == [dt.datetime(2026, 10, 25, 0, 15, tzinfo=UTC)]


@pytest.mark.parametrize("ends_before_the_instant", [True, False])
def test_a_definition_that_skips_overlaps_is_published_ahead_only_once_its_active_run_ended(
    ends_before_the_instant: bool,
):
    start = dt.datetime(2026, 10, 25, 0, 14, 45, tzinfo=UTC)
    instant = dt.datetime(2026, 10, 25, 0, 15, tzinfo=UTC)
    stores = MemoryStores([definition("quarter-hour")], updated_at=start)
    stores.active["quarter-hour"] = uuid.uuid4()
    clock = ManualClock(start)
    published = Published(clock)
    current = scheduler(stores, clock, published, lookahead=10)
    for _ in range(20):
        clock.advance(dt.timedelta(seconds=1))
        if ends_before_the_instant and clock.now() == instant - dt.timedelta(seconds=3):
            del stores.active["quarter-hour"]
        current.tick()
    [(when, kind, _, due, _, _)] = published.records
    assert due == instant
    if ends_before_the_instant:
        assert (kind, when) == ("fired", instant - dt.timedelta(seconds=3))
    else:
        assert (kind, when) == ("skipped", instant)  # judged at its instant, as without lookahead
