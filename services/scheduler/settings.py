"""The scheduler's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import CommonSettings, default_replica_id


class SchedulerSettings(CommonSettings):
    """Settings of the scheduler service."""

    scheduler_tick_seconds: float = Field(default=1.0, gt=0, description="How often schedules are evaluated.")
    scheduler_catch_up_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="A run missed by less than this still fires (the latest one only). At least twice "
        "EXPORT_SCHEDULER_TICK_SECONDS (a run is found due by the first tick after its instant, up to a tick later), "
        "or 0: a run not published ahead of its instant never fires late, it is recorded as missed.",
    )
    scheduler_lookahead_seconds: float = Field(
        default=10.0,
        ge=0,
        # At most a minute: schedules fire on whole minutes, so a window this short holds at most one instant of
        # each schedule, and an edit made inside it cannot add an instant before the one already published.
        le=60,
        description="Runs due within this many seconds are published ahead, with their instant (scheduled_for): the "
        "extractor starts them at that instant (at most EXPORT_EXTRACTOR_MAX_START_WAIT_SECONDS ahead). 0 publishes "
        "each run when it is due.",
    )
    scheduler_lease_seconds: float = Field(
        default=15.0, gt=0, description="Leadership lease; another replica takes over this long after a crash."
    )
    scheduler_replica_id: str = Field(
        default_factory=default_replica_id,
        description="This replica's name in the lease (default: host name and process id).",
    )
    metrics_port: int = Field(default=9401, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")

    @model_validator(mode="after")
    def _catch_up_outlasts_a_tick(self) -> SchedulerSettings:
        """A run is found due by the first tick after its instant, up to one interval later: a window shorter than
        that recorded due runs as missed at random (those a tick found more than the window after their instant). 0 is
        no window at all, every run found after its instant missed: not random, and kept."""
        if 0 < self.scheduler_catch_up_seconds < 2 * self.scheduler_tick_seconds:
            raise ValueError(
                f"scheduler_catch_up_seconds ({self.scheduler_catch_up_seconds:g} s) must be at least twice "
                f"scheduler_tick_seconds ({self.scheduler_tick_seconds:g} s): a run due between two ticks is found "
                "up to a tick after its instant, and one found later than the catch-up window is recorded as missed, "
                "not fired. Raise EXPORT_SCHEDULER_CATCH_UP_SECONDS (or set it to 0: never fire late) or lower "
                "EXPORT_SCHEDULER_TICK_SECONDS"
            )
        return self
