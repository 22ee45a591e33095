"""The extraction store: each run's extraction checkpoint, and incremental definitions' watermarks."""

from __future__ import annotations

import uuid
from typing import Any

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.tables import ExtractionCheckpointRow, WatermarkRow
from shared.domain.checkpoints import Checkpoint, watermark_after_success


class SqlExtractionStore:
    """Where each run's extraction stands (the resume point, and run-request deduplication)."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def claim_extraction(self, run_id: uuid.UUID, definition: str) -> Checkpoint:
        """The run's checkpoint, created at the start if new. ``completed`` means: do not extract again."""
        with self.database.transaction() as session:
            self.database.insert_ignore(
                session,
                ExtractionCheckpointRow,
                {
                    "run_id": str(run_id),
                    "definition": definition,
                    "next_batch_index": 0,
                    "members": 0,
                    "completed": False,
                    "updated_at": now(),
                    "last_key": None,
                },
            )
            row = session.get(ExtractionCheckpointRow, str(run_id))
            assert row is not None
            return Checkpoint(
                run_id,
                row.last_key,
                row.next_batch_index,
                row.members,
                row.completed,
                row.watermark_since,
                row.watermark_until,
            )

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self.database.transaction() as session:
            row = session.get(ExtractionCheckpointRow, str(checkpoint.run_id), with_for_update=True)
            assert row is not None, "save_checkpoint before claim_extraction"
            row.last_key = checkpoint.last_key
            row.next_batch_index = checkpoint.next_batch_index
            row.members = checkpoint.members
            row.completed = checkpoint.completed
            row.watermark_since = checkpoint.watermark_since
            row.watermark_until = checkpoint.watermark_until
            row.updated_at = now()

    def watermark(self, definition: str) -> Any:
        """An incremental definition's watermark (None before its first successful run)."""
        with self.database.transaction() as session:
            row = session.get(WatermarkRow, definition)
            return row.value if row else None

    def advance_watermark(self, run_id: uuid.UUID) -> bool:
        """Move the run's definition's watermark to what the (successful) run covered; True when it moved.

        One transaction, the watermark row locked: the rule (:func:`watermark_after_success`) is a
        compare-and-set on the value the run started from, so calling this again is harmless.
        """
        with self.database.transaction() as session:
            checkpoint = session.get(ExtractionCheckpointRow, str(run_id))
            if checkpoint is None:
                return False
            current = session.get(WatermarkRow, checkpoint.definition, with_for_update=True)
            move = watermark_after_success(
                exists=current is not None,
                current=current.value if current else None,
                since=checkpoint.watermark_since,
                until=checkpoint.watermark_until,
            )
            if move is None:
                return False
            if current is None:
                session.add(
                    WatermarkRow(
                        definition=checkpoint.definition, value=move.value, run_id=str(run_id), updated_at=now()
                    )
                )
            else:
                current.value, current.run_id, current.updated_at = move.value, str(run_id), now()
            return True
