"""A schedule's bounds are stored under their API names, ``from`` and ``to`` (issue 20).

Earlier releases stored an export definition's ``schedule.start_date`` and ``schedule.end_date`` (the
Python names) while the API read ``from``/``to``; the schedule now has one name for each, everywhere.
Each definition's stored spec is rewritten (a data migration, no table changes), through SQLAlchemy
Core so the same code runs on SQLite and PostgreSQL. Downgrade writes the old names back.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_catalog_objects = sa.table(
    "catalog_objects",
    sa.column("id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("spec", sa.JSON()),
)
OLD_TO_NEW = {"start_date": "from", "end_date": "to"}


def _renamed(spec: dict[str, Any], names: dict[str, str]) -> dict[str, Any] | None:
    """``spec`` with its schedule's keys renamed by ``names``; None when there is nothing to rename."""
    schedule = spec.get("schedule")
    if not isinstance(schedule, dict) or not names.keys() & schedule.keys():
        return None
    return spec | {"schedule": {names.get(key, key): value for key, value in schedule.items()}}


def _rename_all(names: dict[str, str]) -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_catalog_objects.c.id, _catalog_objects.c.spec).where(_catalog_objects.c.kind == "ExportDefinition")
    ).all()
    for row_id, spec in rows:
        if isinstance(spec, dict) and (renamed := _renamed(spec, names)) is not None:
            connection.execute(sa.update(_catalog_objects).where(_catalog_objects.c.id == row_id).values(spec=renamed))


def upgrade() -> None:
    _rename_all(OLD_TO_NEW)


def downgrade() -> None:
    _rename_all({new: old for old, new in OLD_TO_NEW.items()})
