import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.schedule_math import due_instants, scheduled_run_id

ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
CRONS = ["*/15 * * * *", "30 * * * *", "0 2 * * *", "15 9 * * 1", "0 6 1 * *", "0 0 29 2 *"]


def test_a_daily_schedule_fires_at_local_time_across_a_dst_change():
    # 02:30 Paris does not exist on 2026-03-29; croniter moves it to the next valid instant.
    start = datetime(2026, 3, 27, 0, 0, tzinfo=UTC)
    instants = due_instants("0 9 * * *", "Europe/Paris", start, start + timedelta(days=4))
    paris = [i.astimezone(zoneinfo.ZoneInfo("Europe/Paris")) for i in instants]
    assert [p.hour for p in paris] == [9, 9, 9, 9]
    assert [i.hour for i in instants] == [8, 8, 7, 7]  # UTC+1 before, UTC+2 after the change


def test_bounds_are_exclusive_after_and_inclusive_until():
    start = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    assert due_instants("0 2 * * *", "UTC", start, start) == []
    assert due_instants("0 2 * * *", "UTC", start - timedelta(seconds=1), start) == [start]


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    span_hours=st.integers(1, 24 * 32),
)
def test_due_instants_are_ascending_in_bounds_and_match_the_cron_locally(cron, zone, start, span_hours):
    until = start + timedelta(hours=span_hours)
    instants = due_instants(cron, zone, start, until)
    assert instants == sorted(set(instants))
    assert all(start < i <= until and i.tzinfo is not None for i in instants)
    local_zone = zoneinfo.ZoneInfo(zone)
    for instant in instants:
        local = instant.astimezone(local_zone)
        assert croniter.match(cron, local.replace(tzinfo=None)) or _shifted_by_dst_gap(cron, local)


def _shifted_by_dst_gap(cron: str, local: datetime) -> bool:
    # A local time inside a DST gap fires at the first valid instant after it.
    before = (local - timedelta(hours=1)).replace(tzinfo=None)
    return croniter.match(cron, before) or croniter.match(cron, local.replace(minute=0, tzinfo=None))


def test_scheduled_run_ids_are_deterministic_and_distinct():
    definition = uuid.uuid4()
    due = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    same_instant_elsewhere = due.astimezone(zoneinfo.ZoneInfo("Asia/Kolkata"))
    assert scheduled_run_id(definition, due) == scheduled_run_id(definition, same_instant_elsewhere)
    assert scheduled_run_id(definition, due) != scheduled_run_id(definition, due + timedelta(minutes=1))
    assert scheduled_run_id(definition, due) != scheduled_run_id(uuid.uuid4(), due)
