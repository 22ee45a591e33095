"""Use case: record a run event (the notifier's fold), moving an incremental definition's watermark on success."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from shared.application.ports import RunEventFold, WatermarkStore
from shared.domain.runs import RunRecord, RunStatus, StartClaims
from shared.events import AnyRunEvent


def record_run_event(
    event: AnyRunEvent, *, runs: RunEventFold, watermarks: WatermarkStore, starts: StartClaims | None = None
) -> tuple[RunRecord | None, RunRecord]:
    """Fold ``event`` into its run's record (claiming ``starts``' notifications if it starts the run, in the same
    transaction); the record before and after.

    When the run has succeeded, its watermark moves (a compare-and-set, so doing it again for a
    redelivered event is harmless, and a crash between the two steps is mended by the redelivery).
    """
    before, after = runs.fold_run_event(event, starts) if starts else runs.fold_run_event(event)
    if after.status is RunStatus.SUCCEEDED:
        watermarks.advance_watermark(event.run_id)
    return before, after


def record_run_events(
    events: Sequence[AnyRunEvent], *, runs: RunEventFold, watermarks: WatermarkStore, starts: StartClaims | None = None
) -> dict[uuid.UUID, tuple[RunRecord | None, RunRecord]]:
    """Fold a poll's events in one transaction; per run, its record before and after them.

    The same rule as :func:`record_run_event`: a succeeded run's watermark moves (compare-and-set).
    """
    folded = runs.fold_run_events(events, starts) if starts else runs.fold_run_events(events)
    for run_id, (_, after) in folded.items():
        if after.status is RunStatus.SUCCEEDED:
            watermarks.advance_watermark(run_id)
    return folded
