"""The scheduler's two new facts about a definition's schedule: the instant whose run request it is publishing
(``firing_for``) and, when its fire times could not be computed, the error's type (``not_computable``).

``firing_for`` is written before a run's request is published and cleared when the schedule moves on after it: a
scheduler that died in between (or whose publication failed) finds it at its next tick and publishes that request
again (the same run id: the extractor runs it once) instead of recording the run missed when it comes back after the
catch-up window. ``not_computable`` is kept until an edit computes the schedule again: the scheduler counts such
definitions (``member_export_scheduler_definitions_not_computable``) and the admin API's schedule preview says it.

Rows with data: null in both (no publication unconfirmed, the schedule computable), what every row was before.
Downgrade drops both columns (an unconfirmed publication is then recorded missed past the window, as before).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as schedules:
        schedules.add_column(sa.Column("firing_for", sa.DateTime(timezone=True), nullable=True))
        schedules.add_column(sa.Column("not_computable", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as schedules:
        schedules.drop_column("not_computable")
        schedules.drop_column("firing_for")
