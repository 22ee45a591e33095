"""Whether a run's request allowed a mass removal (``exportctl run --allow-mass-removal``): on the run's record.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # False for the runs before: their records did not say (an allowed run said so in the extractor's log only).
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("mass_removal_allowed", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("mass_removal_allowed")
