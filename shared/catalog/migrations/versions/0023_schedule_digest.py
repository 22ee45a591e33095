"""A digest of the schedule the scheduler last computed for a definition (``schedules.schedule_digest``): an edit
that leaves the schedule as it was (a rename, a change of notifications or priority) keeps the schedule's place.

The scheduler compares it when a definition's version changes. The same digest: the schedule goes on from where it was
handled (the instants due since fire, or are recorded missed, as after any outage) and keeps the instant whose run
request it was publishing (published again if unconfirmed). Another digest, or none: a schedule edit, counted from the
edit on, as before.

Rows with data: null (no digest known), so their definition's next edit counts as a schedule edit, as before; the
scheduler writes the digest at that sync. Downgrade drops the column (every edit then counts as a schedule edit).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as schedules:
        schedules.add_column(sa.Column("schedule_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as schedules:
        schedules.drop_column("schedule_digest")
