"""Runs split into key ranges, extracted by several extractor replicas at once (issue 18).

``extraction_checkpoints.ranges``: how many key ranges the run was split into (null: not split).
``extraction_ranges``: one row a range, its bounds, its batch indexes and its own checkpoint.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("extraction_checkpoints") as checkpoints:
        checkpoints.add_column(sa.Column("ranges", sa.Integer(), nullable=True))
    op.create_table(
        "extraction_ranges",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("range_index", sa.Integer(), nullable=False),
        sa.Column("lower", sa.JSON(), nullable=True),
        sa.Column("upper", sa.JSON(), nullable=True),
        sa.Column("first_batch_index", sa.Integer(), nullable=False),
        sa.Column("end_batch_index", sa.Integer(), nullable=False),
        sa.Column("last_key", sa.JSON(), nullable=True),
        sa.Column("next_batch_index", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "range_index"),
    )


def downgrade() -> None:
    op.drop_table("extraction_ranges")
    with op.batch_alter_table("extraction_checkpoints") as checkpoints:
        checkpoints.drop_column("ranges")
