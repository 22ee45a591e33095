"""The scheduler's settings: a catch-up window shorter than a tick interval is refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.scheduler.settings import SchedulerSettings


@pytest.mark.parametrize(("tick", "catch_up"), [("1", "0.5"), ("1", "1.5"), ("30", "59")])
def test_a_catch_up_window_under_two_ticks_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch, tick, catch_up):
    """Such a window recorded due runs as missed at random: those a tick found more than the window late."""
    monkeypatch.setenv("EXPORT_SCHEDULER_TICK_SECONDS", tick)
    monkeypatch.setenv("EXPORT_SCHEDULER_CATCH_UP_SECONDS", catch_up)
    with pytest.raises(ValidationError, match="must be at least twice scheduler_tick_seconds"):
        SchedulerSettings()


def test_the_defaults_a_window_of_two_ticks_and_no_window_are_accepted(monkeypatch: pytest.MonkeyPatch):
    assert (SchedulerSettings().scheduler_tick_seconds, SchedulerSettings().scheduler_catch_up_seconds) == (1.0, 3600.0)
    monkeypatch.setenv("EXPORT_SCHEDULER_TICK_SECONDS", "30")
    monkeypatch.setenv("EXPORT_SCHEDULER_CATCH_UP_SECONDS", "60")
    assert SchedulerSettings().scheduler_catch_up_seconds == 60.0
    monkeypatch.setenv("EXPORT_SCHEDULER_CATCH_UP_SECONDS", "0")  # never fire late: every run found late is missed
    assert SchedulerSettings().scheduler_catch_up_seconds == 0.0
