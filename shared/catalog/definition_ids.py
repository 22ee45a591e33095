"""Which definition a batch outcome belongs to, by its stable id (per-member state is keyed by it, never by
the name: a definition deleted and re-created under the same name sees nothing of the old one's)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.catalog.tables import CatalogObjectRow, RunRow
from shared.events import BatchOutcome

#: Values per ``IN (...)`` list.
_CHUNK = 500


def outcome_definition_ids(session: Session, outcomes: Sequence[BatchOutcome]) -> dict[str, str]:
    """Each outcome's run id -> its definition's id: the run's own record (the definition it was started
    for), else the definition of that name now (a run the catalog has no record of); absent when neither
    says (the definition is gone: there is nothing of it to keep)."""
    run_ids = sorted({str(outcome.run_id) for outcome in outcomes})
    found: dict[str, str] = {}
    for start in range(0, len(run_ids), _CHUNK):
        rows = session.execute(
            select(RunRow.run_id, RunRow.definition_id).where(RunRow.run_id.in_(run_ids[start : start + _CHUNK]))
        )
        found.update({run_id: definition_id for run_id, definition_id in rows if definition_id})
    names = sorted({o.definition for o in outcomes if str(o.run_id) not in found})
    if names:
        rows = session.execute(
            select(CatalogObjectRow.name, CatalogObjectRow.id).where(
                CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name.in_(names)
            )
        )
        ids: dict[str, str] = {str(name): str(id_) for name, id_ in rows}
        for outcome in outcomes:
            if str(outcome.run_id) not in found and outcome.definition in ids:
                found[str(outcome.run_id)] = ids[outcome.definition]
    return found


def definition_id_of_run(session: Session, run_id: str, name: str) -> str | None:
    """A run's definition id (its record, else the definition of that name now); None when neither says."""
    recorded = session.scalar(select(RunRow.definition_id).where(RunRow.run_id == run_id))
    if recorded:
        return recorded
    return session.scalar(
        select(CatalogObjectRow.id).where(CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name == name)
    )
