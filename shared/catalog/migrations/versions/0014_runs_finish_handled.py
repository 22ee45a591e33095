"""When the notifier handled a run's finish (failure threshold, auto-pause, final webhook, recovery, metrics).

The runs final before this revision are marked handled (the release that finished them handled them, or gave
up on them for good): the notifier does not handle their finish again when one of their events comes again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The final statuses as of this revision (frozen here: a later status must not change what this revision did).
FINAL = ("succeeded", "completed_with_errors", "failed", "cancelled", "skipped", "missed")


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("finish_handled_at", sa.DateTime(timezone=True), nullable=True))
    table = sa.table(
        "runs",
        sa.column("status", sa.String()),
        sa.column("finished_at", sa.DateTime(timezone=True)),
        sa.column("last_event_at", sa.DateTime(timezone=True)),
        sa.column("finish_handled_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        table.update()
        .where(sa.or_(table.c.status.in_(FINAL), table.c.finished_at.is_not(None)))
        .values(finish_handled_at=sa.func.coalesce(table.c.finished_at, table.c.last_event_at, sa.func.now()))
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("finish_handled_at")
