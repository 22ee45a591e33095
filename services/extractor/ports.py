"""The extraction store, the definitions and the run records as the extractor uses them (SQLAlchemy
implementations in shared/catalog)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shared.application.ports import DefinitionsReader, RunsReader
from shared.domain.catalog_objects import ExportDefinition, RunObjects
from shared.domain.checkpoints import Checkpoint, RangeCheckpoint, RangeState, RunClaim, RunStart, RunTotals
from shared.domain.runs import RunStatus


class ExtractionStore(Protocol):
    """Each run's checkpoint (and its key ranges' when split), and incremental definitions' watermarks; a run's
    claim at its start (checkpoint, sync, status and retries in one transaction)."""

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint: ...
    def claim_run(
        self,
        run_id: uuid.UUID,
        definition: str,
        *,
        fix_sync: Callable[[Checkpoint, Callable[[Checkpoint], None]], Checkpoint] | None = None,
        take_retries: Callable[[Checkpoint], bool] | None = None,
        stop_on: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED}),
    ) -> RunClaim: ...
    def start_runs(
        self,
        starts: Sequence[RunStart],
        announce: Callable[[list[Checkpoint]], None],
        *,
        stop_on: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED}),
    ) -> list[Checkpoint]: ...
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


class ExtractorDefinitions(DefinitionsReader, Protocol):
    """Catalog objects by name, and export definitions by id (a scheduled run published ahead is judged against
    the definition the scheduler published it for, whatever its name by then); a run's definition, query and
    template in one read."""

    def find_by_id(self, kind: type[ExportDefinition], object_id: uuid.UUID) -> ExportDefinition | None: ...
    def run_objects(self, *, name: str | None = None, definition_id: uuid.UUID | None = None) -> RunObjects | None: ...
    def many_run_objects(
        self, *, names: Sequence[str] = (), definition_ids: Sequence[uuid.UUID] = ()
    ) -> tuple[dict[str, RunObjects], dict[uuid.UUID, RunObjects]]: ...
