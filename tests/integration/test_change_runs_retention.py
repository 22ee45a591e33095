"""The retention of ``change_runs`` on SQLite and PostgreSQL, through the notifier's sweep: a change run's row goes
once the run finished more than 7 days ago and its extraction is over; what a resume or a confirmation still
needs stays."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.notifier.delivery_log_sweep import with_log_retention
from shared.catalog import CatalogStores, ChangeSnapshotFollower, SqlChangeSnapshots, SqlRunsStore
from shared.catalog.change_runs_retention import prune_change_runs
from shared.catalog.change_tables import ChangeRunRow
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.change_index import MemberState
from shared.domain.change_staging import StagedMember, Staging
from shared.domain.member_hashes import key_hash
from shared.events import BatchOutcome, ChangeKind, ExtractionCompleted, RunFailed, RunStarted, Trigger

pytestmark = pytest.mark.integration


@pytest.fixture
def changes(catalog: CatalogStores) -> CatalogStores:
    """A catalog holding the change-mode definition ``sync``."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p"))
    catalog.definitions.apply(ExportDefinition(name="sync", query="q", template="t", sync={"mode": "changes"}))
    return catalog


def _change_runs(catalog: CatalogStores) -> dict[str, int]:
    """The rows of ``change_runs``: each run's serial."""
    with catalog.database.engine.connect() as connection:
        rows = connection.execute(sa.select(ChangeRunRow.run_id, ChangeRunRow.serial))
        return {run_id: serial for run_id, serial in rows}


def _run(catalog: CatalogStores, *, finished_days_ago: float | None, extraction_over: bool | None) -> uuid.UUID:
    """A change run of ``sync`` (its row in ``change_runs``), finished that long ago (None: still running), its
    checkpoint completed or not (None: no checkpoint)."""
    run_id = uuid.uuid4()
    at = datetime.now(UTC) - timedelta(days=finished_days_ago or 0)
    events: list[RunStarted | RunFailed] = [RunStarted(run_id=run_id, definition="sync", trigger=Trigger.MANUAL, at=at)]
    if finished_days_ago is not None:
        events.append(RunFailed(run_id=run_id, definition="sync", reason="query failed", at=at))
    catalog.runs.fold_run_events(events)
    SqlChangeSnapshots(catalog.database).begin("sync", str(run_id))
    if extraction_over is not None:
        checkpoint = catalog.extraction.claim_extraction(run_id, "sync")
        catalog.extraction.save_checkpoint(replace(checkpoint, completed=extraction_over))
    return run_id


def test_the_sweep_prunes_the_change_runs_no_resume_or_confirmation_needs(changes: CatalogStores):
    old = [_run(changes, finished_days_ago=10, extraction_over=True) for _ in range(4)]
    old.append(_run(changes, finished_days_ago=10, extraction_over=None))  # no checkpoint (failed at once)
    # Failed as stuck 10 days ago, its extractor still resuming it: its serial keeps its stagings' kinds.
    resuming = _run(changes, finished_days_ago=10, extraction_over=False)
    recent = _run(changes, finished_days_ago=6, extraction_over=True)  # its last outcomes may still come
    # Failed as stuck 10 days ago, its extraction resumed and completed today: its batches' outcomes are to come.
    resumed = _run(changes, finished_days_ago=10, extraction_over=True)
    changes.runs.fold_run_events([ExtractionCompleted(run_id=resumed, definition="sync", members=1, batches=1)])
    running = _run(changes, finished_days_ago=None, extraction_over=False)
    unrecorded = uuid.uuid4()  # its run not folded yet
    snapshots = SqlChangeSnapshots(changes.database)
    snapshots.begin("sync", str(unrecorded))
    # The oldest run staged a member whose outcome never came (its batch lost with the run).
    member = StagedMember(key_hash("a"), "a", 7, b'{"id":"a"}')
    snapshots.stage(snapshots.begin("sync", str(old[0])), [Staging(ChangeKind.ADDED, 0, [member])])

    before = _change_runs(changes)
    with_log_retention(list, changes, 30)()
    kept = [str(r) for r in (resuming, recent, resumed, running, unrecorded)]
    assert _change_runs(changes) == {run_id: before[run_id] for run_id in kept}
    assert prune_change_runs(changes.database) == 0, "nothing more to prune"

    # A resume still finds its serial; an outcome of a pruned run is ignored (its member is added again next run).
    assert snapshots.begin("sync", str(resuming)).serial == before[str(resuming)]
    late = BatchOutcome(
        run_id=old[0],
        definition="sync",
        batch_index=0,
        delivered=1,
        failed=0,
        member_keys=["a"],
        change=ChangeKind.ADDED,
    )
    SqlRunsStore(changes.database, followers=[ChangeSnapshotFollower()]).fold_run_events([late])
    index = snapshots.load(snapshots.begin("sync", str(uuid.uuid4())))
    assert index.states.tolist() == [MemberState.UNDELIVERED]


def test_the_prune_goes_a_bounded_batch_at_a_time(changes: CatalogStores):
    kept = _run(changes, finished_days_ago=1, extraction_over=True)
    for _ in range(5):
        _run(changes, finished_days_ago=8, extraction_over=True)
    assert prune_change_runs(changes.database, batch=2) == 5
    assert set(_change_runs(changes)) == {str(kept)}
