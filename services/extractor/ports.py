"""The extraction store as the extractor uses it (SQLAlchemy implementation in shared/catalog).

The extractor also reads definitions: :class:`shared.application.ports.DefinitionsReader`.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from shared.application.ports import RunsReader
from shared.domain.checkpoints import Checkpoint, RangeCheckpoint, RangeState, RunTotals


class ExtractionStore(Protocol):
    """Each run's checkpoint (and its key ranges' when split), and incremental definitions' watermarks."""

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint: ...
    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...
    def watermark(self, definition: str) -> Any: ...
    def plan_ranges(self, run_id: uuid.UUID, ranges: list[RangeCheckpoint]) -> list[RangeCheckpoint]: ...
    def run_ranges(self, run_id: uuid.UUID) -> list[RangeCheckpoint]: ...
    def range_checkpoint(self, run_id: uuid.UUID, range_index: int) -> RangeCheckpoint | None: ...
    def save_range(self, checkpoint: RangeCheckpoint) -> bool: ...
    def finish_range(self, checkpoint: RangeCheckpoint, state: RangeState) -> RunTotals | None: ...


class ExtractorRuns(RunsReader, Protocol):
    """Run records: a run's (cancelled?), and which definitions have a run not finished (a scheduled run published
    ahead with overlap ``skip`` is judged when it starts)."""

    def active_runs(self, definitions: list[str]) -> dict[str, uuid.UUID]: ...
