"""Webhook notifications in the notifications ledger: longer kinds (``webhook:<channel>:<event>``), and each
webhook's attempts, next attempt (its backoff) and when it was given up.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Emails recorded before keep their rows: 0 attempts counted, due at once if still unsent (as before).
    with op.batch_alter_table("notifications") as notifications:
        notifications.alter_column("kind", type_=sa.String(160), existing_type=sa.String(16), existing_nullable=False)
        notifications.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        notifications.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        notifications.add_column(sa.Column("gave_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # The webhook rows' kinds do not fit the older column: they go (their runs' emails stay).
    op.execute(sa.text("DELETE FROM notifications WHERE kind LIKE 'webhook:%'"))
    with op.batch_alter_table("notifications") as notifications:
        notifications.drop_column("gave_up_at")
        notifications.drop_column("next_attempt_at")
        notifications.drop_column("attempts")
        notifications.alter_column("kind", type_=sa.String(16), existing_type=sa.String(160), existing_nullable=False)
