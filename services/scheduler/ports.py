"""The stores the scheduler uses, as it uses them (SQLAlchemy implementations in shared/catalog)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule_state import DueSchedule, ScheduleAdvance, ScheduleState, ScheduleSync


class SchedulingStore(Protocol):
    """The scheduler's state of each definition, and the leadership lease."""

    def schedules_to_sync(self) -> list[ScheduleSync]: ...
    def save_schedules(self, states: list[ScheduleState]) -> None: ...
    def scheduled_count(self) -> int: ...
    def due_schedules(self, at: datetime, limit: int = 10_000) -> list[DueSchedule]: ...
    def advance_schedules(self, advances: list[ScheduleAdvance]) -> int: ...
    def acquire_lease(self, name: str, holder: str, at: datetime, ttl_seconds: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...


class DefinitionsChanges(Protocol):
    """Whether any definition changed since last asked; the definitions themselves (their series start at 0)."""

    def definitions_fingerprint(self) -> tuple[int, int, datetime | None]: ...
    def list_objects(self, kind: type[ExportDefinition]) -> list[ExportDefinition]: ...


class ActiveRuns(Protocol):
    """Which definitions have a run not finished (the overlap policy)."""

    def active_runs(self, definitions: list[str]) -> dict[str, uuid.UUID]: ...
