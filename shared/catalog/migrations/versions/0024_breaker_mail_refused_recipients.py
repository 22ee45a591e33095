"""The recipients a circuit breaker email's SMTP server refused while it took the email for the others
(``circuit_breaker_mails.refused_recipients``), as the runs' emails keep theirs (0022): each address with the server's
code and text, ``{"ops@example.com": [451, "4.2.1 try again later"]}``.

Those refused for now (a 4xx answer to RCPT TO, e.g. greylisting) are mailed again alone by the notifier's sweep
(never again those who took it), until they take it or the email's attempts are spent; those refused for good (5xx)
are kept to say so. The email stays unsent (due at the next sweep) while some are to be mailed again.

Rows with data: null (no recipient refused, or refused by a release that did not keep them: said in ``last_error``,
not mailed again, as before). Downgrade drops the column (an email pending for its refused-for-now recipients is then
sent again to all its recipients, as an email that failed).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("circuit_breaker_mails") as mails:
        mails.add_column(sa.Column("refused_recipients", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("circuit_breaker_mails") as mails:
        mails.drop_column("refused_recipients")
