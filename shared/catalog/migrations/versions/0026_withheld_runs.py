"""The run still going that held a scheduled run off when the scheduler withheld it under its definition's overlap
policy (``extraction_checkpoints.withheld_for``, a run id): the scheduler's skip of a run whose first request may still
be in Kafka records the run's extraction done before any extractor claims it (session 51), and now also why.

Kept so that the skip is recorded even when its record was not published (the broker failed it, or the scheduler
stopped) and the other run ended before the next tick: that tick finds the run withheld and publishes its skipped
record then (before, the request was published again and ignored: the run had no record at all). The extractor that
reads such a request says it was withheld by the scheduler's overlap policy, not "already extracted".

Rows with data: null (a run extracted, or not started for another reason, or withheld by a release that did not keep
it: its request is ignored as before). Downgrade drops the column (a withheld run's request is still ignored: its
checkpoint stays done).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("extraction_checkpoints") as checkpoints:
        checkpoints.add_column(sa.Column("withheld_for", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("extraction_checkpoints") as checkpoints:
        checkpoints.drop_column("withheld_for")
