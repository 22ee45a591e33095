"""The scheduler's view of definitions: what to (re)compute, what is due, how a schedule moves on. Pure."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.schedule import Schedule


@dataclass(frozen=True)
class ScheduleSync:
    """A definition whose schedule the scheduler must (re)compute."""

    definition_id: uuid.UUID
    definition: ExportDefinition
    version: int
    updated_at: datetime
    handled_until: datetime | None
    #: The digest of the schedule last computed (None: unknown) and the instant whose run request was being published.
    schedule_digest: str | None = None
    firing_for: datetime | None = None


@dataclass(frozen=True)
class ScheduleState:
    """The scheduler's view of one definition."""

    definition_id: uuid.UUID
    version: int
    handled_until: datetime
    next_due_at: datetime | None
    #: Why its fire times could not be computed (the error's type): None when they could.
    not_computable: str | None = None
    #: The digest of the schedule computed (:func:`schedule_digest`), and the instant whose run request is being
    #: published (kept through an edit that leaves the schedule as it was).
    schedule_digest: str | None = None
    firing_for: datetime | None = None


@dataclass(frozen=True)
class DueSchedule:
    """A definition that is due."""

    definition_id: uuid.UUID
    definition: ExportDefinition
    handled_until: datetime
    next_due_at: datetime
    #: The instant of a run request a tick was publishing when it stopped (its publication not confirmed by the
    #: schedule moving on after it): published again, never recorded missed.
    firing_for: datetime | None = None


@dataclass(frozen=True)
class ScheduleAdvance:
    """Move a schedule from ``expected_handled_until`` to ``handled_until`` / ``next_due_at``."""

    definition_id: uuid.UUID
    expected_handled_until: datetime
    handled_until: datetime
    next_due_at: datetime | None
    #: Why its next instant could not be computed (the error's type): None when it could.
    not_computable: str | None = None


@dataclass(frozen=True)
class FiringMark:
    """A schedule whose run for ``instant`` is about to be published (from ``expected_handled_until``)."""

    definition_id: uuid.UUID
    expected_handled_until: datetime
    instant: datetime


def schedule_digest(schedule: Schedule) -> str:
    """A digest of everything in ``schedule`` (its recurrence, bounds, zone, enabled, overlap): equal for an edit that
    left the schedule as it was (a rename, another field)."""
    return hashlib.sha256(schedule.model_dump_json().encode()).hexdigest()
