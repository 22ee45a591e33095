"""A run's change-mode counts (added, changed, unchanged, removed) and its members retried from earlier runs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHANGE_COUNTS = ("added", "changed", "unchanged", "removed")


def upgrade() -> None:
    # Change counts stay null for the runs before (none was a change-mode run); retried is 0 for them.
    with op.batch_alter_table("runs") as runs:
        for name in _CHANGE_COUNTS:
            runs.add_column(sa.Column(name, sa.Integer(), nullable=True))
        runs.add_column(sa.Column("retried", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        for name in (*_CHANGE_COUNTS, "retried"):
            runs.drop_column(name)
