"""Change-mode snapshots: one a definition, one row a member (key hash, fingerprint, last values, staging).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "change_snapshots",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("definition_id", sa.String(36), nullable=False, unique=True),
        sa.Column("last_serial", sa.Integer(), nullable=False),
    )
    op.create_table(
        "change_runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.Integer(), nullable=False),
    )
    op.create_index("ix_change_runs_snapshot_id", "change_runs", ["snapshot_id"])
    op.create_table(
        "change_members",
        sa.Column("snapshot_id", sa.Integer(), primary_key=True),
        sa.Column("key_hash", sa.BigInteger(), primary_key=True),
        sa.Column("member_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.BigInteger(), nullable=True),
        sa.Column("member_values", sa.Text(), nullable=True),
        sa.Column("run_serial", sa.Integer(), nullable=True),
        sa.Column("batch_index", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(8), nullable=True),
        sa.Column("awaiting", sa.Boolean(), nullable=False),
        sa.Column("staged_fingerprint", sa.BigInteger(), nullable=True),
        sa.Column("staged_values", sa.Text(), nullable=True),
        sa.Column("refused_runs", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_change_members_awaiting",
        "change_members",
        ["snapshot_id", "run_serial", "batch_index"],
        postgresql_where=sa.text("awaiting"),
        sqlite_where=sa.text("awaiting = 1"),
    )
    # A run's sync mode and retry scope fixed at its first start, and a change run's counts (a resume keeps them).
    op.add_column("extraction_checkpoints", sa.Column("sync", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("extraction_checkpoints") as batch:
        batch.drop_column("sync")
    op.drop_index("ix_change_members_awaiting", table_name="change_members")
    op.drop_table("change_members")
    op.drop_index("ix_change_runs_snapshot_id", table_name="change_runs")
    op.drop_table("change_runs")
    op.drop_table("change_snapshots")
