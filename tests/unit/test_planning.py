"""What a due schedule does now: fire the latest instant within the catch-up window, record the rest."""

import datetime as dt
import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.planning import anchor_for, plan, scheduled_run_id
from shared.domain.schedule import Schedule, fire_times

UTC = dt.UTC
HOURLY = Schedule.model_validate({"enabled": True, "repeat": {"every": "hour", "minute": 0}})
T0 = dt.datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)


def test_on_time_the_due_instant_fires_and_nothing_is_missed():
    decision = plan(HOURLY, handled_until=T0 + dt.timedelta(minutes=59), now=T0 + HOUR, catch_up=HOUR)
    assert (decision.fire, decision.missed, decision.next_due) == (T0 + HOUR, [], T0 + 2 * HOUR)


def test_late_within_the_window_the_latest_fires_and_older_ones_are_missed():
    decision = plan(HOURLY, handled_until=T0, now=T0 + dt.timedelta(hours=3, minutes=20), catch_up=HOUR)
    assert decision.fire == T0 + 3 * HOUR
    assert decision.missed == [T0 + HOUR, T0 + 2 * HOUR]


def test_late_beyond_the_window_everything_is_missed():
    decision = plan(
        HOURLY, handled_until=T0, now=T0 + dt.timedelta(hours=3, minutes=20), catch_up=dt.timedelta(minutes=10)
    )
    assert decision.fire is None
    assert decision.missed == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]


def test_a_long_outage_lists_a_bounded_number_of_misses_and_still_fires_the_recent_one():
    now = T0 + dt.timedelta(days=30, minutes=5)
    decision = plan(HOURLY, handled_until=T0, now=now, catch_up=HOUR, max_missed=10)
    assert decision.fire == T0 + dt.timedelta(days=30)
    assert decision.missed == [T0 + i * HOUR for i in range(1, 11)]


def test_a_once_schedule_missed_past_the_window_is_missed_and_never_due_again():
    once = Schedule.model_validate({"enabled": True, "once": {"date": "2026-06-01", "time": "12:00"}})
    decision = plan(once, handled_until=T0, now=T0 + dt.timedelta(hours=14), catch_up=HOUR)
    assert (decision.fire, decision.missed, decision.next_due) == (None, [T0 + 12 * HOUR], None)


def test_a_disabled_schedule_never_fires():
    disabled = HOURLY.model_copy(update={"enabled": False})
    decision = plan(disabled, handled_until=T0, now=T0 + 5 * HOUR, catch_up=HOUR)
    assert (decision.fire, decision.missed, decision.next_due) == (None, [], None)


@given(
    handled_minutes=st.integers(0, 5000),
    late_minutes=st.integers(0, 5000),
    window_minutes=st.integers(0, 300),
)
def test_every_due_instant_is_fired_or_missed_exactly_once(handled_minutes, late_minutes, window_minutes):
    handled = T0 + dt.timedelta(minutes=handled_minutes)
    now = handled + dt.timedelta(minutes=late_minutes)
    decision = plan(
        HOURLY, handled_until=handled, now=now, catch_up=dt.timedelta(minutes=window_minutes), max_missed=10_000
    )
    accounted = sorted(decision.missed + ([decision.fire] if decision.fire else []))
    assert accounted == fire_times(HOURLY, handled, now, limit=10_000)
    if decision.fire:
        assert decision.fire > now - dt.timedelta(minutes=window_minutes)
        assert all(m < decision.fire for m in decision.missed)
    assert decision.next_due is not None
    assert decision.next_due > now


def test_new_and_edited_schedules_count_from_their_last_edit():
    edited = T0 + dt.timedelta(hours=5)
    assert anchor_for(None, edited, now=T0 + dt.timedelta(hours=6)) == edited
    assert anchor_for(T0 + dt.timedelta(hours=7), edited, now=T0 + dt.timedelta(hours=8)) == T0 + dt.timedelta(hours=7)
    # A test clock behind the wall clock: nothing before "now" is treated as history.
    assert anchor_for(None, edited, now=T0) == T0


def test_scheduled_run_ids_are_deterministic_and_distinct():
    definition = uuid.uuid4()
    due = dt.datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    same_instant_elsewhere = due.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert scheduled_run_id(definition, due) == scheduled_run_id(definition, same_instant_elsewhere)
    assert scheduled_run_id(definition, due) != scheduled_run_id(definition, due + dt.timedelta(minutes=1))
    assert scheduled_run_id(definition, due) != scheduled_run_id(uuid.uuid4(), due)
