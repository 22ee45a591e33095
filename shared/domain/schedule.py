"""Step 3 of an export definition, *Schedule*, and the maths of when it fires. Pure: no I/O.

The model mirrors the reference platform's screen: Enabled; Recurrence *Once* (date, time) or *Repeat*
with a composer (every 15 or 30 minutes, Hour, Day, Week, Month, Year) that fills a CRON expression,
or *Advanced mode* with a hand-edited CRON; optional From and To dates; one IANA time zone for all.

Semantics (also stated in the README):

- Times are read in the schedule's time zone. From and To are inclusive local dates.
- A local time that does not exist (a DST gap) fires once, at the first valid instant after the gap.
- A local time that occurs twice (a DST overlap) fires once, at its first occurrence, for fixed-time
  schedules (day, week, month, year, and CRON expressions with a single hour); every-15/30-minutes and
  hourly schedules (and CRON expressions over several hours) follow real elapsed time and fire in both.
- Month on day 29, 30 or 31 fires only in months that have that day; "last" means the last day of every
  month. Year on 29 February fires in leap years only.
- *Once* fires one time ever. A disabled schedule never fires.
- Its dates (``from``, ``once.date``) are within years 1900-2999 (``to`` also up to 9999-12-31, the usual
  "no end"): Python's calendar ends at 9999-12-31, and a zone's offset or a search for the next 29 February
  went past it (issue: one such definition stopped every schedule). The fire-time maths also stops at the
  calendar's end rather than failing, for a definition stored before the bound.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared.domain.strict_values import IsoDate, StrictBool

UTC = dt.UTC

# How far around an instant to look for a DST change whose overlap could reorder fire times.
_DST_REACH = dt.timedelta(hours=3)

#: The dates a schedule may name. 1900: a date in the past is harmless, so the bound only refuses typos and
#: sentinels such as 0001-01-01 (whose day before is not a date), and still reads 1900-01-01, itself a common
#: "since always", in definitions stored before it. 2999: nine centuries ahead, yet far enough from Python's last
#: date (9999-12-31) that no zone's offset (at most 26 hours) nor the search for the next 29 February (at most
#: 8 years on) leaves the calendar.
EARLIEST_DATE = dt.date(1900, 1, 1)
LATEST_DATE = dt.date(2999, 12, 31)
#: ``to`` may also be the common "no end" sentinel, up to Python's last date: it is only compared with.
LATEST_END_DATE = dt.date.max
#: The longest IANA zone name is 32 characters (America/Argentina/ComodRivadavia); a longer one is refused
#: before it reaches the file system (a 300-character name raised OSError: File name too long).
MAX_ZONE_LENGTH = 64
#: Files of the zone database that are not IANA zones: the host's own zone (its meaning depends on the machine
#: that computes the schedule), a placeholder, the template of POSIX rules.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
#: Copies of the database under other rules (``right/`` counts leap seconds: its times are 27 s off UTC's).
_NOT_ZONE_PREFIXES = ("posix/", "right/")


def within_schedule_dates(value: dt.date | None, latest: dt.date = LATEST_DATE) -> dt.date | None:
    """``value`` if a schedule may name it (see :data:`EARLIEST_DATE`); ValueError otherwise."""
    if value is not None and not EARLIEST_DATE <= value <= latest:
        raise ValueError(f"must be between {EARLIEST_DATE.isoformat()} and {latest.isoformat()}")
    return value


class Every(StrEnum):
    """The composer's choices."""

    QUARTER_HOUR = "15min"
    HALF_HOUR = "30min"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_CRON_WEEKDAY = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_WEEKDAY_OF_CRON = {number: name for name, number in _CRON_WEEKDAY.items()} | {7: "sun"}
_DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}

Minute = Annotated[int, Field(ge=0, le=59)]
DayOfMonth = Annotated[int, Field(ge=1, le=31)] | Literal["last"]


#: The composer fields each choice uses.
_FIELDS_OF: dict[Every, frozenset[str]] = {
    Every.QUARTER_HOUR: frozenset(),
    Every.HALF_HOUR: frozenset(),
    Every.HOUR: frozenset({"minute"}),
    Every.DAY: frozenset({"time"}),
    Every.WEEK: frozenset({"weekday", "time"}),
    Every.MONTH: frozenset({"day", "time"}),
    Every.YEAR: frozenset({"day", "month", "time"}),
}


#: A wall-clock time of day, written "HH:MM" (JSON Schema's ``format: time`` wants an offset, which a
#: local schedule time does not have).
LocalTime = Annotated[
    dt.time,
    PlainSerializer(lambda value: value.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$", "examples": ["02:00"]}),
]


class Repeat(BaseModel):
    """A repeating recurrence: the composer (``every`` and its fields) or Advanced mode (``cron``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: Every | None = None
    minute: Minute | None = None
    time: LocalTime | None = None
    weekday: Weekday | None = None
    day: DayOfMonth | None = None
    month: Annotated[int, Field(ge=1, le=12)] | None = None
    cron: str | None = None

    @field_validator("time")
    @classmethod
    def _whole_minutes(cls, value: dt.time | None) -> dt.time | None:
        if value is not None and (value.second or value.microsecond or value.tzinfo):
            raise ValueError("must be a local time in whole minutes, like 02:30")
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        return None if cron is None else validate_cron(cron)

    @model_validator(mode="after")
    def _one_mode_with_its_fields(self) -> Repeat:
        given = {name for name in ("minute", "time", "weekday", "day", "month") if getattr(self, name) is not None}
        if self.cron is not None:
            if self.every is not None or given:
                raise ValueError("Advanced mode ('cron') cannot be combined with the composer fields")
            return self
        if self.every is None:
            raise ValueError("either 'every' (the composer) or 'cron' (Advanced mode) is required")
        needed = _FIELDS_OF[self.every]
        if missing := sorted(needed - given):
            raise ValueError(f"'every: {self.every.value}' needs {', '.join(missing)}")
        if extra := sorted(given - needed):
            raise ValueError(f"'every: {self.every.value}' does not use {', '.join(extra)}")
        if self.every == Every.YEAR:
            if self.day == "last":
                raise ValueError("a yearly schedule needs a day number")
            assert self.month is not None
            assert isinstance(self.day, int)
            if self.day > _DAYS_IN_MONTH[self.month]:
                raise ValueError(f"month {self.month} has no day {self.day}")
        return self

    @property
    def expression(self) -> str:
        """The CRON expression (minute hour day-of-month month day-of-week) the composer fills."""
        if self.cron is not None:
            return self.cron
        minute, hour = (self.time.minute, self.time.hour) if self.time else (self.minute, None)
        match self.every:
            case Every.QUARTER_HOUR:
                return "*/15 * * * *"
            case Every.HALF_HOUR:
                return "*/30 * * * *"
            case Every.HOUR:
                return f"{minute} * * * *"
            case Every.DAY:
                return f"{minute} {hour} * * *"
            case Every.WEEK:
                assert self.weekday is not None
                return f"{minute} {hour} * * {_CRON_WEEKDAY[self.weekday.value]}"
            case Every.MONTH:
                return f"{minute} {hour} {'L' if self.day == 'last' else self.day} * *"
            case _:
                return f"{minute} {hour} {self.day} {self.month} *"

    @property
    def follows_elapsed_time(self) -> bool:
        """True for interval schedules (several hours a day): they fire in both passes of a DST overlap."""
        hour_field = self.expression.split()[1]
        return not hour_field.isdigit()


def validate_cron(cron: str) -> str:
    """A five-field CRON expression, whitespace normalised; ValueError naming what is wrong."""
    cron = " ".join(cron.split())
    if len(cron.split()) != 5:
        raise ValueError(f"'{cron}' is not a valid CRON expression (minute hour day month weekday)")
    try:
        next(CronSim(cron, dt.datetime(2000, 1, 1)))
    except CronSimError as exc:
        raise ValueError(f"'{cron}' is not a valid CRON expression: {exc}") from None
    except StopIteration:
        raise ValueError(f"'{cron}' never fires") from None
    return cron


_NUMBER = r"(\d{1,2})"


def composer_of(cron: str) -> Repeat | None:
    """The composer shape a CRON expression has, if any, so Advanced mode can show it as that shape."""
    fields = cron.split()
    if len(fields) != 5:
        return None
    minute, hour, day, month, weekday = fields
    try:
        if (minute, hour, day, month, weekday) == ("*/15", "*", "*", "*", "*"):
            return Repeat(every=Every.QUARTER_HOUR)
        if minute in {"*/30", "0,30"} and (hour, day, month, weekday) == ("*", "*", "*", "*"):
            return Repeat(every=Every.HALF_HOUR)
        if not re.fullmatch(_NUMBER, minute):
            return None
        if (hour, day, month, weekday) == ("*", "*", "*", "*"):
            return Repeat(every=Every.HOUR, minute=int(minute))
        if not re.fullmatch(_NUMBER, hour):
            return None
        at = dt.time(int(hour), int(minute))
        if (day, month, weekday) == ("*", "*", "*"):
            return Repeat(every=Every.DAY, time=at)
        if (day, month) == ("*", "*") and re.fullmatch(r"[0-7]", weekday):
            return Repeat(every=Every.WEEK, weekday=Weekday(_WEEKDAY_OF_CRON[int(weekday)]), time=at)
        if (month, weekday) == ("*", "*") and (day == "L" or re.fullmatch(_NUMBER, day)):
            return Repeat(every=Every.MONTH, day="last" if day == "L" else int(day), time=at)
        if weekday == "*" and re.fullmatch(_NUMBER, day) and re.fullmatch(_NUMBER, month):
            return Repeat(every=Every.YEAR, day=int(day), month=int(month), time=at)
    except ValueError:  # numbers out of range: not a composer shape
        return None
    return None


class Once(BaseModel):
    """Fire one time: a local date and time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: IsoDate
    time: LocalTime

    @field_validator("date")
    @classmethod
    def _supported_date(cls, value: dt.date) -> dt.date:
        within_schedule_dates(value)
        return value


class ChainStatus(StrEnum):
    """The final statuses of a run a chained schedule can follow."""

    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


class After(BaseModel):
    """Fire after each run of another definition that finishes with one of ``statuses`` (a chained export)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    definition: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$")]
    statuses: list[ChainStatus] = Field(default_factory=lambda: [ChainStatus.SUCCEEDED], min_length=1)

    def follows(self, definition: str, status: str) -> bool:
        """Whether a run of ``definition`` that finished ``status`` fires this schedule."""
        return definition == self.definition and status in {s.value for s in self.statuses}

    def summary(self) -> str:
        """How previews say it: ``after nightly (succeeded, completed_with_errors)``."""
        return f"after {self.definition} ({', '.join(s.value for s in self.statuses)})"


class Overlap(StrEnum):
    """What to do when a run is due while the definition's previous run is still active."""

    SKIP = "skip"
    ALLOW = "allow"


#: The names the schedule's bounds had before they were written as on the reference platform's screen.
_RENAMED = {"start_date": "from", "end_date": "to"}


class Schedule(BaseModel):
    """Step 3, *Schedule*.

    ``from`` and ``to`` (the screen's From and To dates) are the bounds' only names, on input and output;
    in Python they are the attributes ``start_date`` and ``end_date`` (``from`` is a keyword).
    """

    # Aliases only: the JSON names are "from" and "to" everywhere (API, manifests, the catalog's rows).
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=False, validate_by_alias=True, serialize_by_alias=True
    )

    enabled: StrictBool = False
    timezone: Annotated[str, Field(max_length=MAX_ZONE_LENGTH)] = "UTC"
    repeat: Repeat | None = None
    once: Once | None = None
    #: A chained export: fires after runs of another definition, not by the clock.
    after: After | None = None
    start_date: IsoDate | None = Field(
        default=None, alias="from", description="the first local date it may fire on (inclusive; none: no start)"
    )
    end_date: IsoDate | None = Field(
        default=None, alias="to", description="the last local date it may fire on (inclusive; none: forever)"
    )
    overlap: Overlap = Overlap.SKIP
    cron: str | None = Field(
        default=None,
        exclude=True,
        description="The CRON expression of a repeating schedule. On input, `cron: ...` is short for "
        "`repeat: {cron: ...}` (Advanced mode); it is always filled in from `repeat`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        # Said by name rather than as an unknown field: an older release answered with these names.
        if isinstance(data, dict) and (renamed := sorted(_RENAMED.keys() & data.keys())):
            raise ValueError(
                "; ".join(f"'{old}' is not a field: the schedule's bound is '{_RENAMED[old]}'" for old in renamed)
            )
        return data

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        return None if cron is None else validate_cron(cron)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            if zone in _NOT_ZONES or zone.startswith(_NOT_ZONE_PREFIXES):
                raise ValueError(zone)
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"'{zone}' is not an IANA time zone") from None
        return zone

    @field_validator("start_date")
    @classmethod
    def _supported_start(cls, value: dt.date | None) -> dt.date | None:
        return within_schedule_dates(value)

    @field_validator("end_date")
    @classmethod
    def _supported_end(cls, value: dt.date | None) -> dt.date | None:
        return within_schedule_dates(value, LATEST_END_DATE)

    @model_validator(mode="after")
    def _coherent(self) -> Schedule:
        if self.cron is not None and self.repeat is not None and self.repeat.expression != self.cron:
            raise ValueError("give either 'cron' or 'repeat', not both")
        # Frozen model: fill in the derived side of cron/repeat once, here.
        if self.cron is not None and self.repeat is None:
            object.__setattr__(self, "repeat", Repeat(cron=self.cron))
        elif self.repeat is not None:
            object.__setattr__(self, "cron", self.repeat.expression)
        if sum(given is not None for given in (self.repeat, self.once, self.after)) > 1:
            raise ValueError("a schedule is one of 'once', 'repeat' or 'after', not several")
        if self.enabled and self.repeat is None and self.once is None and self.after is None:
            raise ValueError("an enabled schedule needs 'once' or 'repeat' (or 'after': a chained export)")
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError("'from' must not be after 'to'")
        return self

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


# --- When a schedule fires ----------------------------------------------------------------------------


def _exists(local: dt.datetime, zone: zoneinfo.ZoneInfo) -> bool:
    aware = local.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local


def _gap_end(local: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The first valid instant after the DST gap that ``local`` falls in (transitions are on whole minutes)."""
    probe = local
    for _ in range(24 * 60):
        probe += dt.timedelta(minutes=1)
        if _exists(probe, zone):
            return probe.replace(tzinfo=zone).astimezone(UTC)
    raise ValueError(f"no valid local time within a day after {local}")  # pragma: no cover - no such zone


def instants_of(local: dt.datetime, zone: zoneinfo.ZoneInfo, *, elapsed_time: bool) -> list[dt.datetime]:
    """The UTC instants at which a naive local wall time happens, per the DST rules above (none when that is
    past the end of Python's calendar)."""
    try:
        first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
        _exists(local, zone)
    except OverflowError:
        return []
    if first == second:
        return [first]
    if not _exists(local, zone):
        return [_gap_end(local, zone)]
    return [first, second] if elapsed_time else [first]


def _overlap_margin(zone: zoneinfo.ZoneInfo, moment: dt.datetime) -> dt.timedelta:
    """The length of a DST overlap near ``moment`` (zero away from one): wall times up to this much
    earlier can still happen later, in the overlap's second pass."""
    before = (moment - _DST_REACH).astimezone(zone).utcoffset()
    after = (moment + _DST_REACH).astimezone(zone).utcoffset()
    assert before is not None
    assert after is not None
    return max(dt.timedelta(0), before - after)


def fire_times(
    schedule: Schedule, after: dt.datetime, until: dt.datetime | None = None, *, limit: int = 1000
) -> list[dt.datetime]:
    """The instants (UTC, ascending) in ``(after, until]`` at which ``schedule`` is due, at most ``limit``.

    Ignores ``enabled``: callers decide whether a disabled schedule is evaluated (a preview still is). Stops at the
    end of Python's calendar (9999-12-31): instants past it never happen.
    """
    try:
        return _fire_times(schedule, after, until, limit)
    except OverflowError:  # the walk itself stops there (below); this catches an ``after`` or ``until`` at the edge
        return []


def _fire_times(schedule: Schedule, after: dt.datetime, until: dt.datetime | None, limit: int) -> list[dt.datetime]:
    zone = schedule.zone

    def in_bounds(local: dt.datetime) -> bool:
        return (schedule.start_date is None or local.date() >= schedule.start_date) and (
            schedule.end_date is None or local.date() <= schedule.end_date
        )

    def wanted(instant: dt.datetime) -> bool:
        return instant > after and (until is None or instant <= until)

    if schedule.once is not None:
        local = dt.datetime.combine(schedule.once.date, schedule.once.time)
        return [i for i in instants_of(local, zone, elapsed_time=False) if wanted(i) and in_bounds(local)][:limit]
    if schedule.repeat is None:
        return []
    elapsed = schedule.repeat.follows_elapsed_time
    # Wall times just before ``after`` can happen after it in a DST overlap's second pass.
    start = after.astimezone(zone).replace(tzinfo=None) - _overlap_margin(zone, after)
    if schedule.start_date is not None and (first_day := dt.datetime.combine(schedule.start_date, dt.time())) > start:
        start = first_day - dt.timedelta(minutes=1)  # after start: never below the calendar's first minute
    stop_local = None
    if until is not None:
        stop_local = until.astimezone(zone).replace(tzinfo=None) + _overlap_margin(zone, until)
    # cronsim walks naive wall-clock times (the DST rules are applied here, by instants_of); measured
    # several times faster than croniter, and the scheduler evaluates thousands of schedules a tick.
    iterator = CronSim(schedule.repeat.expression, start)
    found: set[dt.datetime] = set()
    for local in _until_calendar_end(iterator):
        if schedule.end_date is not None and local.date() > schedule.end_date:
            break
        if stop_local is not None and local > stop_local:
            break
        if in_bounds(local):
            found.update(i for i in instants_of(local, zone, elapsed_time=elapsed) if wanted(i))
        if len(found) >= limit:
            # An overlap can put a later wall time before an earlier one's second pass: go on until the
            # wall clock has passed the limit-th instant by the overlap's length.
            kth = sorted(found)[limit - 1]
            if local > kth.astimezone(zone).replace(tzinfo=None) + _overlap_margin(zone, kth):
                break
    return sorted(found)[:limit]


def _until_calendar_end(iterator: Iterator[dt.datetime]) -> Iterator[dt.datetime]:
    """``iterator``'s times up to the end of Python's calendar (cronsim raises OverflowError past it)."""
    while True:
        try:
            yield next(iterator)
        except (StopIteration, OverflowError):
            return


def next_fire_times(schedule: Schedule, after: dt.datetime, count: int = 5) -> list[dt.datetime]:
    """The next ``count`` fire times after ``after``: the preview the API and CLI show."""
    return fire_times(schedule, after, limit=count)
