"""The retention of ``change_runs`` (a change-mode run's snapshot and serial), kept by the notifier's sweep.

A change run's row serves two readers: the run itself when it resumes after a crash (its serial: the members it
staged keep their kind), and the outcome follower confirming the members its batches staged. Neither needs it
once the run has finished and its last outcomes are long in: a row goes when its run finished more than
``keep_days`` ago, had no event since (a run failed as stuck whose extractor resumed it later sent its batches
then), and its extraction is over (a run failed as stuck while its extractor still resumes keeps it).
An outcome later still (a batch held that long) is ignored: its members keep their last delivered values, so
the next run sends them again. Without this, the table grows by a row a change run, forever.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, or_, select, true

from shared.catalog.change_tables import ChangeRunRow
from shared.catalog.database import CatalogDatabase, now
from shared.catalog.tables import ExtractionCheckpointRow, RunRow

#: Days a finished change run's row is kept (as a run's claim of retries: ``member_retries_store.KEEP_DAYS``).
KEEP_DAYS = 7.0
#: Rows one delete takes at most (each its own short transaction).
PRUNE_BATCH = 5_000


def prune_change_runs(database: CatalogDatabase, keep_days: float = KEEP_DAYS, *, batch: int = PRUNE_BATCH) -> int:
    """Drop the rows of change runs finished, and without an event, for more than ``keep_days``, whose extraction
    is over; how many went."""
    cutoff = now() - timedelta(days=keep_days)
    checkpoint = ExtractionCheckpointRow
    finished = (
        select(ChangeRunRow.run_id)
        .join(RunRow, RunRow.run_id == ChangeRunRow.run_id)
        .outerjoin(checkpoint, checkpoint.run_id == ChangeRunRow.run_id)
        .where(
            RunRow.finished_at < cutoff,
            # A final run's record still takes its events (a stuck run's extraction resumed, its outcomes).
            RunRow.last_event_at < cutoff,
            or_(checkpoint.run_id.is_(None), checkpoint.completed == true()),
        )
        .limit(batch)
    )
    gone = 0
    while True:
        with database.transaction() as session:
            runs = list(session.scalars(finished))
            if runs:
                session.execute(delete(ChangeRunRow).where(ChangeRunRow.run_id.in_(runs)))
        gone += len(runs)
        if len(runs) < batch:
            return gone
