"""The extraction store as the extractor uses it (SQLAlchemy implementation in shared/catalog).

The extractor also reads definitions and runs: :class:`shared.application.ports.DefinitionsReader`
and :class:`shared.application.ports.RunsReader`.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from shared.domain.checkpoints import Checkpoint


class ExtractionStore(Protocol):
    """Each run's checkpoint, and incremental definitions' watermarks."""

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint: ...
    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...
    def watermark(self, definition: str) -> Any: ...
