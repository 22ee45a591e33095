"""The scheduler's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    """Settings of the scheduler service."""

    scheduler_tick_seconds: float = Field(default=1.0, gt=0, description="How often schedules are evaluated.")
    metrics_port: int = Field(default=9401, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
