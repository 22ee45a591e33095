"""The objects each catalog object names (``catalog_references``): a template its query and profile, a definition its
query, its templates (the destination's and change mode's per kind) and the definition it follows
(``schedule.after``), each as (kind, name), indexed by (kind, name).

A delete or rename of an object is refused while another names it: the objects naming it were found by reading and
validating every template and definition (twice per delete: before it and in its transaction), some 2 s per delete
with 10,000 definitions; now one indexed query. Filled here from the stored templates and definitions (their JSON:
the names are never encrypted), then kept by every write of an object, in its transaction. Downgrade drops the
table (the store of the release before reads every object again).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | Sequence[str] | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _named(kind: str, spec: dict[str, Any]) -> set[tuple[str, str]]:
    """What a stored template or definition names, from its JSON (as ``references`` of this release reads it)."""
    if kind == "HttpTemplate":
        found = {("SavedQuery", spec.get("query")), ("ConnectionProfile", spec.get("profile"))}
    else:
        sync, schedule = (value if isinstance(value := spec.get(part), dict) else {} for part in ("sync", "schedule"))
        after = schedule.get("after")
        found = {("SavedQuery", spec.get("query")), ("HttpTemplate", spec.get("template"))}
        found |= {("HttpTemplate", sync.get(field)) for field in ("added", "changed", "removed")}
        found.add(("ExportDefinition", after.get("definition") if isinstance(after, dict) else None))
    return {(named_kind, name) for named_kind, name in found if isinstance(name, str) and name}


def upgrade() -> None:
    references = op.create_table(
        "catalog_references",
        sa.Column("referrer_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("referrer_id", "kind", "name"),
    )
    op.create_index("ix_catalog_references_named", "catalog_references", ["kind", "name"])
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT id, kind, spec FROM catalog_objects WHERE kind IN ('HttpTemplate', 'ExportDefinition')")
    )
    named = [
        {"referrer_id": row_id, "kind": kind, "name": name}
        for row_id, row_kind, spec in rows
        for kind, name in sorted(_named(row_kind, spec if isinstance(spec, dict) else json.loads(spec)))
    ]
    if named:
        op.bulk_insert(references, named)


def downgrade() -> None:
    op.drop_index("ix_catalog_references_named", table_name="catalog_references")
    op.drop_table("catalog_references")
