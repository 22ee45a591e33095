"""Who disabled a definition's schedule (``catalog_objects.schedule_paused_by``), set in the pause's transaction.

The notifier pauses a schedule after a run's consecutive failures and sends the ``paused`` webhook; a finish
interrupted after the pause sends it when it is done again, only when that run's failures paused the schedule (not
an operator, not an earlier run before an operator resumed it): judged from this column, no longer from counting the
failures in a row.

Rows with data: the column is null (not known) for every object, disabled schedules included: who disabled them
before this revision is not recorded (the audit log says who changed them, not which run paused them).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_objects") as objects:
        objects.add_column(sa.Column("schedule_paused_by", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("catalog_objects") as objects:
        objects.drop_column("schedule_paused_by")
