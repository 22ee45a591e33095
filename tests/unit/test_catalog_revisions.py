"""The catalog's revisions as read from the migration scripts without Alembic (``shared.catalog.schema``): the
top-level ``revision`` and ``down_revision`` assignments, whatever their form (the integration tests hold the
shipped scripts' reading equal to Alembic's)."""

from __future__ import annotations

from pathlib import Path

from shared.catalog.schema import _assigned

SCRIPT = '''"""Merge two lines of revisions.

revision history: the docstring says so, and is not an assignment
Revision ID: 0015
Revises: 0013, 0014
"""

from collections.abc import Sequence

revision: str = "0015"
down_revision: str | Sequence[str] | None = (
    "0013",
    "0014",
)
branch_labels: str | Sequence[str] | None = None


def upgrade() -> None:
    revision = "not at the top level"
'''


def test_the_top_level_identifiers_are_read_over_the_lines_they_span(tmp_path: Path) -> None:
    script = tmp_path / "0015_merge.py"
    script.write_text(SCRIPT)

    assert _assigned(script) == {"revision": "0015", "down_revision": ("0013", "0014")}


def test_a_plain_assignment_and_a_first_revision_without_parent(tmp_path: Path) -> None:
    script = tmp_path / "0001_first.py"
    script.write_text('revision = "0001"  # the first\ndown_revision = None\n')

    assert _assigned(script) == {"revision": "0001", "down_revision": None}
