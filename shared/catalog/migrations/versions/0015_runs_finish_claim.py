"""Who is handling a run's finish, since when: one notifier replica at a time does a run's finish work.

A replica claims a run's finish (``finish_claimed_by``, ``finish_claimed_at``) before doing it; another replica
takes the claim over only once it is older than the lease (``EXPORT_NOTIFIER_FINISH_LEASE_SECONDS``: its holder
died). The runs whose finish is still to handle are indexed (a partial index, nearly empty: runs not final yet
and finishes in progress) for the notifier's sweep, which finishes those no event comes for again.

Runs with data need nothing: no run's finish is claimed before this revision.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("finish_claimed_at", sa.DateTime(timezone=True), nullable=True))
        runs.add_column(sa.Column("finish_claimed_by", sa.String(200), nullable=True))
    op.create_index(
        "ix_runs_finish_unhandled",
        "runs",
        ["finished_at"],
        postgresql_where=sa.text("finish_handled_at IS NULL"),
        sqlite_where=sa.text("finish_handled_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_finish_unhandled", table_name="runs")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("finish_claimed_by")
        runs.drop_column("finish_claimed_at")
