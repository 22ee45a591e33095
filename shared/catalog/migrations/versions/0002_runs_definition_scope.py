"""Runs know their definition's id and business unit (``runs.definition_id``, ``runs.business_unit``).

Both nullable: a run whose definition has since been deleted keeps nulls. Existing runs are filled in
from ``catalog_objects`` (the ``ExportDefinition`` of the run's ``definition`` name and its spec's
``business_unit``), reading and writing through SQLAlchemy Core so the same code runs on SQLite and
PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUSINESS_UNIT_LENGTH = 100

_catalog_objects = sa.table(
    "catalog_objects",
    sa.column("id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("name", sa.String()),
    sa.column("spec", sa.JSON()),
)
_runs = sa.table(
    "runs",
    sa.column("definition", sa.String()),
    sa.column("definition_id", sa.String()),
    sa.column("business_unit", sa.String()),
)


def upgrade() -> None:
    scopes = _definition_scopes()  # first: refuse before changing anything
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("definition_id", sa.String(length=36), nullable=True))
        runs.add_column(sa.Column("business_unit", sa.String(length=BUSINESS_UNIT_LENGTH), nullable=True))
        runs.create_index(op.f("ix_runs_definition_id"), ["definition_id"], unique=False)
    if scopes:
        op.get_bind().execute(
            sa.update(_runs)
            .where(_runs.c.definition == sa.bindparam("b_name"))
            .values(definition_id=sa.bindparam("b_definition_id"), business_unit=sa.bindparam("b_business_unit")),
            scopes,
        )


def _definition_scopes() -> list[dict[str, str | None]]:
    """Each export definition's name, id and business unit: what its runs get."""
    definitions = op.get_bind().execute(
        sa.select(_catalog_objects.c.id, _catalog_objects.c.name, _catalog_objects.c.spec).where(
            _catalog_objects.c.kind == "ExportDefinition"
        )
    )
    scopes: list[dict[str, str | None]] = []
    for definition_id, name, spec in definitions:
        business_unit = spec.get("business_unit") if isinstance(spec, dict) else None
        if business_unit is not None and len(str(business_unit)) > BUSINESS_UNIT_LENGTH:
            # PostgreSQL would refuse it mid-migration, SQLite keep it silently: say which, on both.
            raise RuntimeError(
                f"ExportDefinition '{name}' has a business_unit of {len(str(business_unit))} characters, "
                f"runs.business_unit holds {BUSINESS_UNIT_LENGTH}: shorten it (exportctl apply) and upgrade again"
            )
        scopes.append(
            {
                "b_name": name,
                "b_definition_id": definition_id,
                "b_business_unit": None if business_unit is None else str(business_unit),
            }
        )
    return scopes


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_index(op.f("ix_runs_definition_id"))
        runs.drop_column("business_unit")
        runs.drop_column("definition_id")
