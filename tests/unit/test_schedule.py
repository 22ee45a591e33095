"""The schedule model and its fire times, checked against a brute-force oracle across DST changes.

The oracle walks every UTC minute of the window and applies the stated rules directly: a matching local
wall time fires (fixed-time schedules only at its first occurrence); a matching local time that a DST gap
skips fires at the first instant after the gap.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import zoneinfo
from functools import cache
from typing import Any

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.domain.schedule import Every, Once, Repeat, Schedule, composer_of, fire_times, next_fire_times

UTC = dt.UTC
ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
MINUTE = dt.timedelta(minutes=1)


# --- the oracle ----------------------------------------------------------------------------------------


def cron_matcher(cron: str):
    (minutes, hours, days, months, weekdays), _ = croniter.expand(cron)

    def allows(values, value) -> bool:
        return values == ["*"] or value in values

    def match(t: dt.datetime) -> bool:
        if not (allows(minutes, t.minute) and allows(hours, t.hour) and allows(months, t.month)):
            return False
        last_day = calendar.monthrange(t.year, t.month)[1]
        day_ok = days == ["*"] or t.day in days or ("l" in days and t.day == last_day)
        weekday_ok = allows(weekdays, t.isoweekday() % 7) or (7 in weekdays and t.isoweekday() == 7)
        if days != ["*"] and weekdays != ["*"]:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    return match


def oracle(schedule: Schedule, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    assert schedule.repeat is not None
    zone = schedule.zone
    match = cron_matcher(schedule.repeat.expression)
    elapsed = schedule.repeat.follows_elapsed_time

    def in_bounds(day: dt.date) -> bool:
        return (schedule.start_date is None or day >= schedule.start_date) and (
            schedule.end_date is None or day <= schedule.end_date
        )

    fires = set()
    t = after.replace(second=0, microsecond=0) + MINUTE
    while t <= until:
        local = t.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if match(wall) and in_bounds(wall.date()) and (elapsed or local.fold == 0):
            fires.add(t)
        before = (t - MINUTE).astimezone(zone)
        if local.utcoffset() > before.utcoffset():  # type: ignore[operator]  # a DST gap ends at t
            skipped = before.replace(tzinfo=None) + MINUTE
            while skipped < wall:
                if match(skipped) and in_bounds(skipped.date()):
                    fires.add(t)
                skipped += MINUTE
        t += MINUTE
    return sorted(fires)


@cache
def transitions(zone_name: str) -> list[dt.datetime]:
    """DST changes of a zone in 2026-2028 (found by scanning hours)."""
    zone = zoneinfo.ZoneInfo(zone_name)
    found, t = [], dt.datetime(2026, 1, 1, tzinfo=UTC)
    previous = t.astimezone(zone).utcoffset()
    while t.year < 2029:
        t += dt.timedelta(hours=1)
        offset = t.astimezone(zone).utcoffset()
        if offset != previous:
            found.append(t)
            previous = offset
    return found or [dt.datetime(2026, 3, 29, tzinfo=UTC)]


# --- strategies ----------------------------------------------------------------------------------------

# Local times around 00:00-03:59 meet the DST changes; others keep the rest honest.
times = st.builds(dt.time, st.sampled_from([0, 1, 2, 3, 2, 1, 9, 23]), st.sampled_from([0, 15, 30, 45, 59]))


@st.composite
def repeats(draw) -> Repeat:
    every = draw(st.sampled_from(list(Every)))
    fields = {
        Every.HOUR: lambda: {"minute": draw(st.sampled_from([0, 15, 30, 45, 59]))},
        Every.DAY: lambda: {"time": draw(times)},
        Every.WEEK: lambda: {"time": draw(times), "weekday": draw(st.sampled_from(["mon", "sat", "sun"]))},
        Every.MONTH: lambda: {"time": draw(times), "day": draw(st.sampled_from([1, 28, 29, 30, 31, "last"]))},
        Every.YEAR: lambda: {"time": draw(times), "day": draw(st.integers(1, 29)), "month": draw(st.integers(1, 12))},
    }.get(every, dict)()
    return Repeat(every=every, **fields)


@st.composite
def windows(draw, zone: str):
    """(after, until): a window of up to 3 days, usually straddling a DST change."""
    if zone != "Asia/Kolkata" and draw(st.booleans()):
        around = draw(st.sampled_from(transitions(zone)))
        after = around - dt.timedelta(minutes=draw(st.integers(0, 36 * 60)))
    else:
        after = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=draw(st.integers(0, 3 * 365 * 1440)))
    after += dt.timedelta(seconds=draw(st.sampled_from([0, 0, 30])))
    return after, after + dt.timedelta(minutes=draw(st.integers(1, 3 * 1440)))


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repeat=repeats(), zone=st.sampled_from(ZONES), data=st.data())
def test_fire_times_follow_the_stated_rules_across_dst_changes(repeat: Repeat, zone: str, data):
    after, until = data.draw(windows(zone))
    schedule = Schedule(enabled=True, timezone=zone, repeat=repeat)
    assert fire_times(schedule, after, until) == oracle(schedule, after, until)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repeat=repeats(), zone=st.sampled_from(ZONES), data=st.data())
def test_from_and_to_are_inclusive_local_dates(repeat: Repeat, zone: str, data):
    after, until = data.draw(windows(zone))
    local_start = after.astimezone(zoneinfo.ZoneInfo(zone)).date()
    start = local_start + dt.timedelta(days=data.draw(st.integers(0, 1)))
    end = start + dt.timedelta(days=data.draw(st.integers(0, 1)))
    schedule = Schedule(enabled=True, timezone=zone, repeat=repeat, **{"from": start, "to": end})
    fires = fire_times(schedule, after, until)
    assert fires == oracle(schedule, after, until)
    assert all(start <= f.astimezone(schedule.zone).date() <= end for f in fires)


@given(repeat=repeats())
def test_the_composer_is_recognised_again_from_its_cron(repeat: Repeat):
    assert composer_of(repeat.expression) == repeat


@settings(max_examples=50, deadline=None)
@given(zone=st.sampled_from(ZONES), first=st.integers(0, 3 * 365), count=st.integers(1, 20))
def test_fixed_time_schedules_fire_once_per_matching_day(zone: str, first: int, count: int):
    schedule = Schedule(enabled=True, timezone=zone, repeat=Repeat(every=Every.DAY, time=dt.time(2, 30)))
    after = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(days=first)
    fires = next_fire_times(schedule, after, count)
    local_days = [f.astimezone(schedule.zone).date() for f in fires]
    assert len(fires) == count
    assert local_days == sorted(set(local_days))
    assert all((b - a).days == 1 for a, b in itertools.pairwise(local_days))


# --- examples the reference platform's users meet ------------------------------------------------------


def local(schedule: Schedule, instants: list[dt.datetime]) -> list[str]:
    return [i.astimezone(schedule.zone).strftime("%Y-%m-%d %H:%M %Z") for i in instants]


def test_a_time_in_the_spring_gap_fires_once_at_the_end_of_the_gap():
    schedule = Schedule.model_validate(
        {"enabled": True, "timezone": "Europe/Paris", "repeat": {"every": "day", "time": "02:30"}}
    )
    fires = fire_times(schedule, dt.datetime(2026, 3, 28, tzinfo=UTC), dt.datetime(2026, 3, 31, tzinfo=UTC))
    assert local(schedule, fires) == ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"]


def test_a_time_in_the_autumn_overlap_fires_once_for_daily_and_twice_for_every_15_minutes():
    daily = Schedule.model_validate({"timezone": "Europe/Paris", "repeat": {"every": "day", "time": "02:15"}})
    window = (dt.datetime(2026, 10, 24, 22, tzinfo=UTC), dt.datetime(2026, 10, 25, 3, tzinfo=UTC))
    assert local(daily, fire_times(daily, *window)) == ["2026-10-25 02:15 CEST"]
    quarter = Schedule.model_validate({"timezone": "Europe/Paris", "repeat": {"every": "15min"}})
    two_am = [f for f in local(quarter, fire_times(quarter, *window)) if " 02:" in f]
    assert two_am == [
        "2026-10-25 02:00 CEST",
        "2026-10-25 02:15 CEST",
        "2026-10-25 02:30 CEST",
        "2026-10-25 02:45 CEST",
        "2026-10-25 02:00 CET",
        "2026-10-25 02:15 CET",
        "2026-10-25 02:30 CET",
        "2026-10-25 02:45 CET",
    ]


def test_lord_howe_half_hour_shift():
    hourly = Schedule.model_validate({"timezone": "Australia/Lord_Howe", "repeat": {"every": "hour", "minute": 0}})
    fires = fire_times(hourly, dt.datetime(2026, 10, 3, 14, tzinfo=UTC), dt.datetime(2026, 10, 3, 17, tzinfo=UTC))
    assert [f.astimezone(hourly.zone).strftime("%H:%M %z") for f in fires] == [
        "01:00 +1030",
        "02:30 +1100",
        "03:00 +1100",
        "04:00 +1100",
    ]


def test_month_days_29_to_31_fire_only_in_months_that_have_them_and_last_means_last():
    def monthly(day) -> list[str]:
        schedule = Schedule.model_validate(
            {"timezone": "UTC", "repeat": {"every": "month", "day": day, "time": "06:00"}}
        )
        return [f.strftime("%m-%d") for f in next_fire_times(schedule, dt.datetime(2028, 1, 1, tzinfo=UTC), 6)]

    assert monthly(31) == ["01-31", "03-31", "05-31", "07-31", "08-31", "10-31"]
    assert monthly(30) == ["01-30", "03-30", "04-30", "05-30", "06-30", "07-30"]
    assert monthly(29) == ["01-29", "02-29", "03-29", "04-29", "05-29", "06-29"]  # 2028 is a leap year
    assert monthly("last") == ["01-31", "02-29", "03-31", "04-30", "05-31", "06-30"]


def test_29_february_fires_in_leap_years_only():
    schedule = Schedule.model_validate(
        {"timezone": "Asia/Kolkata", "repeat": {"every": "year", "day": 29, "month": 2, "time": "09:00"}}
    )
    fires = next_fire_times(schedule, dt.datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert [f.astimezone(schedule.zone).strftime("%Y-%m-%d %H:%M") for f in fires] == [
        "2028-02-29 09:00",
        "2032-02-29 09:00",
        "2036-02-29 09:00",
    ]


def test_once_fires_one_time_ever():
    schedule = Schedule.model_validate(
        {"enabled": True, "timezone": "America/New_York", "once": {"date": "2026-12-24", "time": "18:00"}}
    )
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert fire_times(schedule, start, start + dt.timedelta(days=3650)) == [dt.datetime(2026, 12, 24, 23, tzinfo=UTC)]
    assert fire_times(schedule, dt.datetime(2026, 12, 24, 23, tzinfo=UTC), start + dt.timedelta(days=3650)) == []


@pytest.mark.parametrize(
    ("cron", "shape"),
    [
        ("*/15 * * * *", {"every": "15min"}),
        ("0,30 * * * *", {"every": "30min"}),
        ("5 * * * *", {"every": "hour", "minute": 5}),
        ("0 2 * * *", {"every": "day", "time": "02:00"}),
        ("30 6 * * 1", {"every": "week", "weekday": "mon", "time": "06:30"}),
        ("0 2 L * *", {"every": "month", "day": "last", "time": "02:00"}),
        ("0 9 29 2 *", {"every": "year", "day": 29, "month": 2, "time": "09:00"}),
    ],
)
def test_advanced_cron_that_matches_a_composer_shape_is_shown_as_that_shape(cron, shape):
    assert composer_of(cron) == Repeat.model_validate(shape)


@pytest.mark.parametrize("cron", ["0 */2 * * *", "0 9-17 * * 1-5", "0 2 1,15 * *", "0 2 * * 1,3"])
def test_other_cron_expressions_stay_in_advanced_mode(cron):
    assert composer_of(cron) is None
    assert Schedule.model_validate({"cron": cron}).cron == cron


@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        ({"every": "day"}, "needs time"),
        ({"every": "hour", "minute": 5, "time": "02:00"}, "does not use time"),
        ({"every": "year", "day": 31, "month": 4, "time": "02:00"}, "month 4 has no day 31"),
        ({"cron": "0 0 30 2 *"}, "Bad day-of-month"),
        ({"cron": "0 2 * *"}, "not a valid CRON"),
        ({"every": "day", "time": "02:00", "cron": "0 2 * * *"}, "cannot be combined"),
        ({"every": "day", "time": "02:00:30"}, "whole minutes"),
    ],
)
def test_invalid_recurrences_are_refused_with_the_reason(repeat, message):
    with pytest.raises(ValidationError, match=message):
        Schedule.model_validate({"repeat": repeat})


def test_from_after_to_is_refused():
    with pytest.raises(ValidationError, match="'from' must not be after 'to'"):
        Schedule.model_validate({"cron": "0 2 * * *", "from": "2026-02-01", "to": "2026-01-01"})


def test_a_disabled_schedule_is_still_previewed():
    schedule = Schedule.model_validate({"enabled": False, "cron": "0 2 * * *"})
    assert len(next_fire_times(schedule, dt.datetime(2026, 1, 1, tzinfo=UTC), 3)) == 3


# --- dates at the ends of the calendar (a schedule whose maths overflowed stopped every schedule) -------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "0 2 * * *", "from": "0001-01-01"}, ("from",)),
        ({"cron": "0 2 * * *", "from": "1899-12-31"}, ("from",)),
        ({"cron": "0 9 29 2 *", "from": "9997-01-01"}, ("from",)),
        ({"cron": "0 2 * * *", "from": "3000-01-01"}, ("from",)),
        ({"cron": "0 2 * * *", "to": "1899-12-31"}, ("to",)),
        ({"timezone": "America/New_York", "once": {"date": "9999-12-31", "time": "23:00"}}, ("once", "date")),
        ({"once": {"date": "3000-01-01", "time": "23:00"}}, ("once", "date")),
        ({"cron": "0 2 * * *", "timezone": "x" * 300}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "Europe/" + "x" * 60}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "Europe/" + "x" * 40}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "localtime"}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "Factory"}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "posixrules"}, ("timezone",)),
        ({"cron": "0 2 * * *", "timezone": "right/UTC"}, ("timezone",)),
    ],
)
def test_dates_out_of_range_and_zones_that_are_not_iana_zones_are_refused_naming_the_field(body, field):
    with pytest.raises(ValidationError) as refused:
        Schedule.model_validate({"enabled": True, **body})
    assert [error["loc"] for error in refused.value.errors()] == [field]


def test_the_dates_bounds_and_the_no_end_sentinel_are_accepted():
    schedule = Schedule.model_validate({"enabled": True, "cron": "0 2 * * *", "from": "1900-01-01", "to": "9999-12-31"})
    assert next_fire_times(schedule, dt.datetime(2026, 1, 1, tzinfo=UTC), 1) == [dt.datetime(2026, 1, 1, 2, tzinfo=UTC)]
    last = Schedule.model_validate(
        {
            "enabled": True,
            "timezone": "America/Argentina/ComodRivadavia",
            "once": {"date": "2999-12-31", "time": "23:00"},
        }
    )
    assert next_fire_times(last, dt.datetime(2026, 1, 1, tzinfo=UTC)) == [dt.datetime(3000, 1, 1, 2, tzinfo=UTC)]


def _stored(**fields: Any) -> Schedule:
    """A schedule as a catalog may hold it from before the dates' bound (not validated again)."""
    defaults: dict[str, Any] = {"enabled": True, "timezone": "UTC", "repeat": None, "once": None, "after": None}
    return Schedule.model_construct(**(defaults | {"start_date": None, "end_date": None} | fields))


def test_fire_times_stop_at_the_end_of_the_calendar_instead_of_overflowing():
    after = dt.datetime(2026, 12, 6, tzinfo=UTC)
    daily = Repeat(every=Every.DAY, time=dt.time(2))
    # The day before 0001-01-01 is not a date: the schedule fires as one with no start.
    assert fire_times(_stored(repeat=daily, start_date=dt.date(1, 1, 1)), after, limit=2) == [
        dt.datetime(2026, 12, 6, 2, tzinfo=UTC),
        dt.datetime(2026, 12, 7, 2, tzinfo=UTC),
    ]
    # 9999-12-31 23:00 in New York is past the calendar's end in UTC: it never happens.
    late_once = Once.model_construct(date=dt.date(9999, 12, 31), time=dt.time(23))
    assert fire_times(_stored(timezone="America/New_York", once=late_once), after) == []
    # No 29 February is left in the calendar after 9997.
    leap_day = Repeat(every=Every.YEAR, day=29, month=2, time=dt.time(9))
    assert fire_times(_stored(repeat=leap_day, start_date=dt.date(9997, 1, 1)), after) == []
    # A schedule with no bound walks up to the calendar's last day, and stops there.
    new_york = Schedule.model_validate({"enabled": True, "timezone": "America/New_York", "cron": "0 23 * * *"})
    assert fire_times(new_york, dt.datetime(9999, 12, 29, tzinfo=UTC)) == [
        dt.datetime(9999, 12, 29, 4, tzinfo=UTC),
        dt.datetime(9999, 12, 30, 4, tzinfo=UTC),
        dt.datetime(9999, 12, 31, 4, tzinfo=UTC),
    ]
