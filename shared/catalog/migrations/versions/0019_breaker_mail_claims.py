"""The circuit breaker emails' claims: when each unsent email is due again (``next_attempt_at``).

A notifier sweep claims the outbox's unsent emails it is about to try, at once, by pushing their next attempt time a
lease ahead on the catalog's clock, and sends only those it claimed: two replicas sweeping at the same moment send
each email once (before, both read the same rows and both sent it). A change's email is claimed the same way when
its event is handled, so that a sweep does not send it beside.

Rows with data: null, due at once (as every unsent email was before this revision). Downgrade drops the column (a
claim in hand is lost: the email is due at the next sweep).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("circuit_breaker_mails") as mails:
        mails.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("circuit_breaker_mails") as mails:
        mails.drop_column("next_attempt_at")
