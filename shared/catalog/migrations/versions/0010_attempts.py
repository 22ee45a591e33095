"""The attempt inspector's table: the last HTTP attempts per definition and profile (masked, bodies cut).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table: the rows already in the catalog are not touched.
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("definition", sa.String(100), nullable=False),
        # The definition's id when the row was written: a deleted definition's rows are never shown for a
        # namesake created later (null: no such definition any more).
        sa.Column("definition_id", sa.String(36), nullable=True),
        sa.Column("profile", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("batch_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("request_headers", sa.JSON(), nullable=False),
        sa.Column("request_body", sa.Text(), nullable=False),
        sa.Column("request_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("response_headers", sa.JSON(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    # The cap: failed and successful attempts of a (definition, profile) are kept apart.
    op.create_index("ix_attempts_pair", "attempts", ["definition", "profile", "success", "id"])
    op.create_index("ix_attempts_definition", "attempts", ["definition_id", "id"])
    op.create_index("ix_attempts_at", "attempts", ["at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_at", table_name="attempts")
    op.drop_index("ix_attempts_definition", table_name="attempts")
    op.drop_index("ix_attempts_pair", table_name="attempts")
    op.drop_table("attempts")
