"""Where an extraction stands, and when an incremental definition's watermark moves. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Checkpoint:
    """Where an extraction stands: resume after ``last_key`` with batch ``next_batch_index``."""

    run_id: uuid.UUID
    last_key: Any
    next_batch_index: int
    members: int
    completed: bool
    watermark_since: Any = None
    watermark_until: Any = None


@dataclass(frozen=True)
class WatermarkMove:
    """Move the watermark to ``value`` (the run's ``until``)."""

    value: Any


def watermark_after_success(*, exists: bool, current: Any, since: Any, until: Any) -> WatermarkMove | None:
    """Where a definition's watermark goes when a run that covered (``since``, ``until``] succeeds.

    Compare-and-set on the value the run started from: a run that started before another incremental
    run succeeded does not move the watermark back (its members are exported again by the next run
    rather than skipped). The first successful run (no watermark yet) sets it if it started from none.
    Deciding again for the same run changes nothing, so a redelivered event is harmless.
    """
    if until is None:
        return None
    if not exists:
        return WatermarkMove(until) if since is None else None
    return WatermarkMove(until) if current == since and current != until else None
