"""What a due schedule should do now: fire, record misses, and when it is next due. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.domain.schedule import Schedule, fire_times

#: Namespace of scheduled run ids: uuid5(namespace, "<definition id>/<due instant in UTC>").
RUN_ID_NAMESPACE = uuid.UUID("6f1c1f52-2b4e-4a51-9b0a-5b0f5e3c9d10")


def scheduled_run_id(definition_id: uuid.UUID, due: datetime) -> uuid.UUID:
    """The run id of a definition's run due at ``due``: the same for every replica and every replay."""
    return uuid.uuid5(RUN_ID_NAMESPACE, f"{definition_id}/{due.astimezone(UTC).isoformat()}")


@dataclass(frozen=True)
class Plan:
    """The decision for one schedule at one tick."""

    fire: datetime | None
    """The due instant to fire now (the latest within the catch-up window), if any."""
    missed: list[datetime]
    """Due instants that can no longer fire: older than the window, or older than the one that fires."""
    next_due: datetime | None
    """The first instant after now at which the schedule is due (None: never again)."""


#: CRON fires at most once a minute, so a schedule whose stored next instant is more recent than this has
#: no other instant due: it can fire at once, before its next instant is even computed.
ON_TIME_SLACK = timedelta(seconds=30)


def fires_on_time(next_due: datetime, now: datetime, catch_up: timedelta) -> bool:
    """True when ``next_due`` is the only instant due and may fire without planning (the common case)."""
    return now - min(ON_TIME_SLACK, catch_up) < next_due <= now


def next_due_after(schedule: Schedule, moment: datetime) -> datetime | None:
    """The first instant after ``moment`` at which an enabled ``schedule`` is due (None: never again)."""
    upcoming = fire_times(schedule, moment, limit=1) if schedule.enabled else []
    return upcoming[0] if upcoming else None


def anchor_for(handled_until: datetime | None, updated_at: datetime, now: datetime) -> datetime:
    """Where a newly seen or edited schedule starts counting: nothing before its last edit fires."""
    edited = min(updated_at, now)
    return max(handled_until, edited) if handled_until else edited


def plan(
    schedule: Schedule,
    *,
    handled_until: datetime,
    now: datetime,
    catch_up: timedelta,
    max_missed: int = 100,
) -> Plan:
    """Decide what is due in ``(handled_until, now]``.

    The latest instant within ``catch_up`` of now fires; every other due instant in the interval is
    missed (at most ``max_missed`` of them are listed, the oldest first, so a scheduler down for a year
    does not flood the run history).
    """
    if not schedule.enabled:
        return Plan(fire=None, missed=[], next_due=None)
    # The common case, one instant due: a single walk finds it and the next one.
    ahead = fire_times(schedule, handled_until, limit=2)
    if len(ahead) < 2 or ahead[1] > now:
        due = [d for d in ahead if d <= now]
        upcoming = [d for d in ahead if d > now][:1]
        window_start = now - catch_up
        fire = due[-1] if due and due[-1] > window_start else None
        return Plan(fire=fire, missed=[d for d in due if d != fire], next_due=upcoming[0] if upcoming else None)
    next_due = fire_times(schedule, now, limit=1)
    due = fire_times(schedule, handled_until, now, limit=max_missed + 1)
    if len(due) > max_missed:
        # Too many to list: the oldest are listed, and the window's own instants are found from its start.
        recent = fire_times(schedule, max(handled_until, now - catch_up), now)
        due = due[:max_missed] + [d for d in recent if d > due[max_missed - 1]][-1:]
    window_start = now - catch_up
    fire = due[-1] if due and due[-1] > window_start else None
    missed = [d for d in due if d != fire]
    return Plan(fire=fire, missed=missed[:max_missed], next_due=next_due[0] if next_due else None)
