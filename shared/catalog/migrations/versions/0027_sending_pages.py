"""The page a run (or a split run's range) is sending beyond its checkpoint (``extraction_checkpoints.sending``,
``extraction_ranges.sending``: its last key and the batch index after its batches, JSON), written ahead of the page's
records in the same UPDATE as the previous page's checkpoint: a resume re-reads exactly that page, from the
checkpoint's next batch index, and numbers the pages after it from the recorded index on, so members inserted or
deleted between a crash and its resume move no member of a later page into identities already sent (before, the page
was re-read by size from the checkpoint).

Rows with data: null (no page recorded: a run checkpointed by an older release resumes as before, reading its next
page by size). Downgrade drops the columns (a resume then reads by size again).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | Sequence[str] | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("extraction_checkpoints", "extraction_ranges")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("sending", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("sending")
