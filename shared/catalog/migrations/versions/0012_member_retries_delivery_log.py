"""Refused members retried by the next runs (member_retries, run_retries, run_retry_claims) and the member delivery log
(delivery_batches: one row per batch outcome, its members' keys and its refused members packed).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # New tables only: the runs before have no per-member state (their outcomes named no members). Keyed by the
    # definition's stable id, never its name (a namesake re-created later sees nothing of the old one's).
    op.create_table(
        "member_retries",
        sa.Column("definition_id", sa.String(36), primary_key=True),
        sa.Column("member_key", sa.Text(), primary_key=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("failed_runs", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_run_id", sa.String(36), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_member_retries_pending", "member_retries", ["definition_id", "state"])
    op.create_table(
        "run_retries",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("member_key", sa.Text(), primary_key=True),
    )
    op.create_table(
        "run_retry_claims",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("definition_id", sa.String(36), nullable=False),
        sa.Column("keys", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_run_retry_claims_claimed_at", "run_retry_claims", ["claimed_at"])
    op.create_index("ix_member_retries_updated_at", "member_retries", ["state", "updated_at"])
    op.create_table(
        "delivery_batches",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("batch_index", sa.Integer(), primary_key=True),
        sa.Column("definition_id", sa.String(36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("retry", sa.Boolean(), nullable=False),
        sa.Column("keys", sa.LargeBinary(), nullable=False),
        sa.Column("refused", sa.LargeBinary(), nullable=True),
    )
    op.create_index("ix_delivery_batches_definition_at", "delivery_batches", ["definition_id", "at"])
    op.create_index("ix_delivery_batches_at", "delivery_batches", ["at"])


def downgrade() -> None:
    for table in ("delivery_batches", "run_retry_claims", "run_retries", "member_retries"):
        op.drop_table(table)
