"""The dispatcher replicas' heartbeats (profiles' limits shared between them) and the profiles' circuit
breakers across replicas (the breakers open at each replica, the fleet's state, each opening and closing
announced and mailed once).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatcher_replicas",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("beat_at", sa.Float(), nullable=False),
        sa.Column("drained_view", sa.String(64), nullable=True),
    )
    op.create_index("ix_dispatcher_replicas_beat_at", "dispatcher_replicas", ["beat_at"])
    op.create_table(
        "circuit_breakers",
        sa.Column("profile", sa.String(100), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("announced", sa.Integer(), nullable=True),
    )
    op.create_table(
        "open_breakers",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(100), primary_key=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_open_breakers_seen_at", "open_breakers", ["seen_at"])
    op.create_table(
        "circuit_breaker_mails",
        sa.Column("profile", sa.String(100), primary_key=True),
        sa.Column("ordinal", sa.Integer(), primary_key=True),
        sa.Column("definition", sa.String(100), primary_key=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    # Both tables hold live state only (heartbeats, breakers' current state): nothing to keep.
    op.drop_table("circuit_breaker_mails")
    op.drop_index("ix_open_breakers_seen_at", table_name="open_breakers")
    op.drop_table("open_breakers")
    op.drop_table("circuit_breakers")
    op.drop_index("ix_dispatcher_replicas_beat_at", table_name="dispatcher_replicas")
    op.drop_table("dispatcher_replicas")
