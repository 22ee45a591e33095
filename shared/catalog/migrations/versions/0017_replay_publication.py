"""A replay run's publication: what it was recorded to send, how far Kafka acknowledged it, who publishes it now.

A replay of a run's dead letters under an Idempotency-Key is retried as the same replay run. ``replay_plan`` (its
members, batches and a digest of their records, written when the replay run is recorded) tells a retry whose dead
letters changed (refused: a new key) from the same replay; ``replay_acknowledged`` (how many of its publication
steps Kafka acknowledged: run.started, its batches, run.extraction_completed) stops a retry from publishing again
what Kafka already has; ``replay_claimed_by``/``replay_claimed_at`` is a lease: one request publishes it at a time
(a double click, two concurrent retries).

Rows with data: every column null (0 for the steps): a replay run recorded before this revision has no plan to
compare, and a retry of it publishes what it did before, less the batches with an outcome.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("replay_plan", sa.JSON(), nullable=True))
        runs.add_column(sa.Column("replay_acknowledged", sa.Integer(), nullable=False, server_default="0"))
        runs.add_column(sa.Column("replay_claimed_at", sa.DateTime(timezone=True), nullable=True))
        runs.add_column(sa.Column("replay_claimed_by", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("replay_claimed_by")
        runs.drop_column("replay_claimed_at")
        runs.drop_column("replay_acknowledged")
        runs.drop_column("replay_plan")
