"""A schedule in words, its next fire times in its zone and in UTC, and where a DST change moves one. Pure.

The maths is the domain's (:mod:`shared.domain.schedule`: ``Repeat.expression``, ``composer_of``,
``next_fire_times``); this only says it for a person.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from shared.domain.schedule import Every, Repeat, Schedule, composer_of, next_fire_times

WEEKDAYS = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
            "sat": "Saturday", "sun": "Sunday"}  # fmt: skip
#: How far around an instant to look for a DST change.
_REACH = dt.timedelta(hours=3)


def repeat_summary(repeat: Repeat) -> str:
    """``Every day at 02:00``; an Advanced-mode expression with a composer shape says that shape."""
    shape = composer_of(repeat.cron) if repeat.cron is not None else repeat
    if shape is None:
        return f"CRON {repeat.expression}"
    at = shape.time.strftime("%H:%M") if shape.time else ""
    match shape.every:
        case Every.QUARTER_HOUR:
            return "Every 15 minutes"
        case Every.HALF_HOUR:
            return "Every 30 minutes"
        case Every.HOUR:
            return f"Every hour at :{shape.minute:02d}"
        case Every.DAY:
            return f"Every day at {at}"
        case Every.WEEK:
            assert shape.weekday is not None
            return f"Every {WEEKDAYS[shape.weekday.value]} at {at}"
        case Every.MONTH:
            day = "the last day" if shape.day == "last" else f"day {shape.day}"
            return f"On {day} of every month at {at}"
        case _:
            assert shape.month is not None
            return f"Every {shape.day} {calendar.month_name[shape.month]} at {at}"


def summary(schedule: Schedule) -> str:
    """The whole schedule in one line: recurrence, zone, bounds."""
    if schedule.once is not None:
        text = f"Once on {schedule.once.date.isoformat()} at {schedule.once.time.strftime('%H:%M')}"
    elif schedule.repeat is not None:
        text = repeat_summary(schedule.repeat)
    elif schedule.after is not None:
        return schedule.after.summary().capitalize()  # a chained export: no zone, no bounds
    else:
        return "On demand only"
    bounds = ""
    if schedule.start_date:
        bounds += f" from {schedule.start_date.isoformat()}"
    if schedule.end_date:
        bounds += f" to {schedule.end_date.isoformat()}"
    return f"{text} ({schedule.timezone}){bounds}"


def next_run(schedule: Schedule, now: dt.datetime) -> dt.datetime | None:
    """When an enabled schedule fires next (None: disabled, or nothing left)."""
    if not schedule.enabled:
        return None
    times = next_fire_times(schedule, now, 1)
    return times[0] if times else None


@dataclass(frozen=True)
class FireTime:
    """One fire time, in the schedule's zone and in UTC, with what a DST change does to it (if anything)."""

    local: dt.datetime
    utc: dt.datetime
    dst_note: str | None


def fire_times(schedule: Schedule, now: dt.datetime, count: int = 5) -> list[FireTime]:
    """The next ``count`` fire times (whether or not the schedule is enabled: a preview)."""
    zone = schedule.zone
    return [
        FireTime(local=instant.astimezone(zone), utc=instant.astimezone(dt.UTC), dst_note=dst_note(schedule, instant))
        for instant in next_fire_times(schedule, now, count)
    ]


def _offset(instant: dt.datetime, zone: dt.tzinfo) -> dt.timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _hours(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def dst_note(schedule: Schedule, instant: dt.datetime) -> str | None:
    """What the DST change around ``instant`` does to this fire time, or None when there is none near it."""
    zone = schedule.zone
    before, after = _offset(instant - _REACH, zone), _offset(instant + _REACH, zone)
    if before == after:
        return None
    local = instant.astimezone(zone)
    change = f"clocks change from {_hours(before)} to {_hours(after)} that night"
    wanted = _wall_time(schedule)
    if after > before:  # spring forward: a gap
        if wanted is not None and wanted != local.time().replace(second=0, microsecond=0):
            return (
                f"{wanted.strftime('%H:%M')} does not exist on {local.date().isoformat()} (DST gap): "
                f"fires at {local.strftime('%H:%M')} instead; {change}"
            )
        return change
    other = local.replace(fold=1 - local.fold)
    if other.astimezone(dt.UTC) != instant.astimezone(dt.UTC):  # fall back: this wall time happens twice
        elapsed = schedule.repeat is not None and schedule.repeat.follows_elapsed_time
        what = "fires in both passes (it follows elapsed time)" if elapsed else "fires at its first occurrence only"
        return f"{local.strftime('%H:%M')} happens twice on {local.date().isoformat()} (DST overlap): {what}; {change}"
    return change


def _wall_time(schedule: Schedule) -> dt.time | None:
    """The local time of day a fixed-time schedule names (None for interval schedules)."""
    if schedule.once is not None:
        return schedule.once.time
    if schedule.repeat is None:
        return None
    minute, hour = schedule.repeat.expression.split()[:2]
    if minute.isdigit() and hour.isdigit():
        return dt.time(int(hour), int(minute))
    return None
