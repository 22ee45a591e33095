"""Replay runs in the scope of the run they replay: their business unit and definition id, from that run.

A replay run was recorded without the ``business_unit`` and ``definition_id`` a run's request records, so a
business-unit-scoped token could not read, follow or cancel it (404), and the definition's attempts did not list it.
New replay runs are recorded with the definition's they run through; this revision gives existing ones the replayed
run's (``replay_of``), a replay of a replay once the one it replays has them, pass after pass until a pass changes
nothing: however long the chain (each pass fills at least one NULL and empties none, so the passes end; PostgreSQL's
statement sees its snapshot and fills one more link a pass, SQLite's may fill several).

Downgrade: nothing to undo (the values are the ones the replay runs are now recorded with; 0017 has the columns).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _backfill(column: str) -> sa.Update:
    """Portable (SQLite, PostgreSQL): a replay run without ``column`` gets the replayed run's, when it has one."""
    runs = sa.table("runs", sa.column("run_id"), sa.column("replay_of"), sa.column(column))
    replayed = runs.alias("o")
    of_replayed = replayed.c.run_id == runs.c.replay_of
    return (
        sa.update(runs)
        .where(runs.c[column].is_(None), runs.c.replay_of.is_not(None))
        .where(sa.exists().where(of_replayed, replayed.c[column].is_not(None)))
        .values({column: sa.select(replayed.c[column]).where(of_replayed).scalar_subquery()})
    )


def upgrade() -> None:
    connection = op.get_bind()
    for column in ("business_unit", "definition_id"):
        while connection.execute(_backfill(column)).rowcount:
            pass  # one more link of a chain of replays of replays given its scope


def downgrade() -> None:
    """Nothing: the scopes given are kept (0017 reads them as any run's)."""
