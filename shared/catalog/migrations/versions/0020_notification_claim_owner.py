"""Who holds a notification's claim: the notifier replica whose finish claimed it (``claimed_by``), the end of the
lease it wrote with it (``claimed_until``), and when it claimed or last renewed it (``claimed_at``).

A finish claims each of its emails and webhooks in the ledger for one attempt (a lease on ``next_attempt_at``). The
claim now names the replica that made it, so that the same replica (the same ``EXPORT_NOTIFIER_REPLICA_ID``: a
container restarted in place) takes it back at once when it handles the event again after being killed between the
claim and the send's record: only a claim made (or renewed) before its process started (``claimed_at``, on the
catalog's clock), so that a live twin sharing the id, or the same process after losing the catalog at the record,
waits for the lease as any other replica does. The claim is the replica's only while ``next_attempt_at`` still
equals ``claimed_until``: a claim taken over since, a failed attempt's backoff or a release (by this release or an
older one, which writes ``next_attempt_at`` alone) ends it.

Rows with data: null in the three, a claim of no replica (it waits for its lease, as every claim did before this
revision). Downgrade drops the three columns (the claims in hand keep their lease: they wait for it, as before).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as notifications:
        notifications.add_column(sa.Column("claimed_by", sa.String(200), nullable=True))
        notifications.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        notifications.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as notifications:
        notifications.drop_column("claimed_at")
        notifications.drop_column("claimed_until")
        notifications.drop_column("claimed_by")
