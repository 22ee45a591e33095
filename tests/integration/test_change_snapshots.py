"""The change-mode snapshot store on SQLite and PostgreSQL: staging, the outcome follower, removals, migration 0009."""

from __future__ import annotations

import decimal
import uuid
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from services.extractor.change_extraction import page_keys
from shared.catalog.change_snapshots import ChangeSnapshotFollower, SqlChangeSnapshots
from shared.catalog.engine import make_engine
from shared.catalog.runs_store import SqlRunsStore
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.change_index import Kind, MemberState
from shared.domain.change_staging import StagedMember, Staging
from shared.domain.member_hashes import key_hash
from shared.errors import NotFound
from shared.events import BatchOutcome, ChangeKind, RefusedMember, RunStarted, Trigger
from shared.member_fingerprints import canonical_json
from shared.member_keys import outcome_key
from tests.integration.test_migrations import fill_baseline

pytestmark = pytest.mark.integration


def _member(key: str, fingerprint: int) -> StagedMember:
    return StagedMember(key_hash(key), key, fingerprint, f'{{"id":"{key}","v":{fingerprint}}}'.encode())


def _outcome(
    run_id: uuid.UUID, batch: int, keys: list[str], refused: list[str], change: ChangeKind, status: int = 503
) -> BatchOutcome:
    return BatchOutcome(
        run_id=run_id,
        definition="sync",
        batch_index=batch,
        delivered=len(keys) - len(refused),
        failed=len(refused),
        member_keys=keys,
        refused=[RefusedMember(key=k, status=status, reason="refused") for k in refused],
        change=change,
    )


def _definition(catalog: CatalogStores, name: str, **fields: Any) -> None:
    """A change-mode definition (snapshots are its id's)."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p"))
    catalog.definitions.apply(ExportDefinition(name=name, query="q", template="t", sync={"mode": "changes"}, **fields))


def _states(snapshots: SqlChangeSnapshots, run) -> dict[int, tuple[int, int]]:
    index = snapshots.load(run)
    return {
        k: (f, s)
        for k, f, s in zip(index.keys.tolist(), index.fingerprints.tolist(), index.states.tolist(), strict=True)
    }


def test_the_snapshot_moves_only_for_delivered_members_and_forgets_delivered_removals(catalog: CatalogStores):
    _definition(catalog, "sync")
    snapshots = SqlChangeSnapshots(catalog.database)
    runs = SqlRunsStore(catalog.database, followers=[ChangeSnapshotFollower()])
    first = uuid.uuid4()
    runs.fold_run_event(RunStarted(run_id=first, definition="sync", trigger=Trigger.MANUAL))
    run = snapshots.begin("sync", str(first))
    assert snapshots.begin("sync", str(first)) == run, "a resumed run keeps its serial"
    assert len(snapshots.load(run)) == 0
    snapshots.stage(run, [Staging(ChangeKind.ADDED, 0, [_member("a", 1), _member("b", 2), _member("c", 3)])])
    # Staged, not delivered: a resumed run sees them as added by this run.
    assert {s for _, s in _states(snapshots, run).values()} == {MemberState.ADDED_IN_RUN}
    runs.fold_run_event(_outcome(first, 0, ["a", "b", "c"], ["c"], ChangeKind.ADDED))

    second = uuid.uuid4()
    runs.fold_run_event(RunStarted(run_id=second, definition="sync", trigger=Trigger.MANUAL))
    run2 = snapshots.begin("sync", str(second))
    assert run2.serial == run.serial + 1
    states = _states(snapshots, run2)
    assert states[key_hash("a")] == (1, MemberState.DELIVERED)
    assert states[key_hash("b")] == (2, MemberState.DELIVERED)
    assert states[key_hash("c")][1] == MemberState.UNDELIVERED, "the refused member is added again next run"
    index = snapshots.load(run2)
    # a changed, c added again, b not seen: removed.
    kinds = index.classify(np.array([key_hash("a"), key_hash("c")]), np.array([10, 3]))
    assert kinds.tolist() == [Kind.CHANGED, Kind.ADDED]
    assert index.removed().tolist() == [key_hash("b")]
    assert snapshots.last_values(run2, [key_hash("b")]) == {key_hash("b"): b'{"id":"b","v":2}'}
    snapshots.stage(run2, [Staging(ChangeKind.CHANGED, 0, [_member("a", 10)])])
    snapshots.stage_removed(run2, 1, [key_hash("b")])
    runs.fold_run_event(_outcome(second, 0, ["a"], [], ChangeKind.CHANGED))
    runs.fold_run_event(_outcome(second, 1, ["b"], [], ChangeKind.REMOVED))
    # The same outcome again (a redelivery) is not followed twice: the ledger counted it once.
    runs.fold_run_event(_outcome(second, 1, ["b"], [], ChangeKind.REMOVED))
    resumed = _states(snapshots, run2)
    assert resumed[key_hash("a")] == (10, MemberState.CHANGED_IN_RUN)
    assert resumed[key_hash("b")][1] == MemberState.REMOVED_IN_RUN, "a resumed run sends the same removal batch"

    third = uuid.uuid4()
    run3 = snapshots.begin("sync", str(third))
    states = _states(snapshots, run3)
    assert key_hash("b") not in states, "a delivered removal is forgotten by the next run"
    assert states[key_hash("a")] == (10, MemberState.DELIVERED)
    snapshots.forget(run3, [key_hash("c")])
    assert key_hash("c") not in _states(snapshots, run3)


def test_an_outcome_that_cannot_name_its_failures_moves_nothing(catalog: CatalogStores):
    _definition(catalog, "vague")
    snapshots = SqlChangeSnapshots(catalog.database)
    runs = SqlRunsStore(catalog.database, followers=[ChangeSnapshotFollower()])
    run_id = uuid.uuid4()
    runs.fold_run_event(RunStarted(run_id=run_id, definition="vague", trigger=Trigger.MANUAL))
    run = snapshots.begin("vague", str(run_id))
    snapshots.stage(run, [Staging(ChangeKind.ADDED, 0, [_member("a", 1), _member("b", 2)])])
    vague = _outcome(run_id, 0, ["a", "b"], [], ChangeKind.ADDED).model_copy(update={"delivered": 1, "failed": 1})
    runs.fold_run_event(vague)
    next_run = snapshots.begin("vague", str(uuid.uuid4()))
    assert {s for _, s in _states(snapshots, next_run).values()} == {MemberState.UNDELIVERED}


def test_kinds_not_sent_move_the_snapshot_at_once(catalog: CatalogStores):
    _definition(catalog, "quiet")
    snapshots = SqlChangeSnapshots(catalog.database)
    run = snapshots.begin("quiet", str(uuid.uuid4()))
    snapshots.stage(run, [Staging(ChangeKind.ADDED, None, [_member("x", 5)])])
    snapshots.stage_removed(run, None, [key_hash("x")])
    next_run = snapshots.begin("quiet", str(uuid.uuid4()))
    assert len(snapshots.load(next_run)) == 0


def test_a_refused_member_with_a_numeric_key_is_sent_again_next_run(catalog: CatalogStores):
    _definition(catalog, "numeric")
    # A NUMERIC(12,2) key: the driver gives Decimal('1042.00'), the record writes 1042, the outcome names "1042".
    snapshots = SqlChangeSnapshots(catalog.database)
    runs = SqlRunsStore(catalog.database, followers=[ChangeSnapshotFollower()])
    run_id = uuid.uuid4()
    runs.fold_run_event(RunStarted(run_id=run_id, definition="numeric", trigger=Trigger.MANUAL))
    run = snapshots.begin("numeric", str(run_id))
    rows = [(decimal.Decimal("1042.00"), "gold"), (decimal.Decimal("7.50"), "gold")]
    staged = [
        StagedMember(key_hash(k), k, 5, canonical_json(["id", "tier"], row))
        for k, row in zip(page_keys(rows, 0), rows, strict=True)
    ]
    snapshots.stage(run, [Staging(ChangeKind.ADDED, 0, staged)])
    named = [outcome_key(orjson.loads(m.values)["id"]) for m in staged]  # as the dispatcher names them
    runs.fold_run_event(_outcome(run_id, 0, named, named[:1], ChangeKind.ADDED))
    states = _states(snapshots, snapshots.begin("numeric", str(uuid.uuid4())))
    assert states[staged[0].key_hash][1] == MemberState.UNDELIVERED, "refused: added again by the next run"
    assert states[staged[1].key_hash] == (5, MemberState.DELIVERED)


def test_a_member_retry_rejected_gives_up_is_sent_again_only_when_its_values_change(catalog: CatalogStores):
    _definition(catalog, "picky", retry_rejected={"runs": 1})
    snapshots = SqlChangeSnapshots(catalog.database)
    runs = SqlRunsStore(catalog.database, followers=[ChangeSnapshotFollower()])

    def refused_run() -> dict[int, tuple[int, int]]:
        """A run sending a (fingerprint 1), b and c (2), refused a with 503 and b with 422: the next run's view."""
        run_id = uuid.uuid4()
        runs.fold_run_event(RunStarted(run_id=run_id, definition="picky", trigger=Trigger.MANUAL))
        run = snapshots.begin("picky", str(run_id))
        snapshots.stage(run, [Staging(ChangeKind.ADDED, 0, [_member("a", 1), _member("b", 2), _member("c", 2)])])
        outcome = _outcome(run_id, 0, ["a", "b", "c"], ["a", "b"], ChangeKind.ADDED).model_copy(
            update={"definition": "picky"}
        )
        outcome.refused[1] = RefusedMember(key="b", status=422, reason="invalid")
        runs.fold_run_event(outcome)
        return _states(snapshots, snapshots.begin("picky", str(uuid.uuid4())))

    first = refused_run()
    assert first[key_hash("a")][1] == MemberState.UNDELIVERED, "503, within retry_rejected.runs: sent again"
    assert first[key_hash("b")] == (2, MemberState.DELIVERED), "422 (invalid_runs 0): given up, taken as it is"
    assert first[key_hash("c")] == (2, MemberState.DELIVERED)
    second = refused_run()
    assert second[key_hash("a")] == (1, MemberState.DELIVERED), "refused again past its budget: given up"


def test_a_snapshot_is_its_definitions_and_goes_with_it(catalog: CatalogStores):
    _definition(catalog, "gone")
    snapshots = SqlChangeSnapshots(catalog.database)
    run = snapshots.begin("gone", str(uuid.uuid4()))
    snapshots.stage(run, [Staging(ChangeKind.ADDED, None, [_member("x", 5)])])
    catalog.definitions.delete(ExportDefinition, "gone")
    with catalog.database.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM change_members")).scalar() == 0, "dropped"
    with pytest.raises(NotFound):
        snapshots.begin("gone", str(uuid.uuid4()))
    # Created again under the same name (for another partner, say): it starts from no snapshot, all added.
    _definition(catalog, "gone")
    assert len(snapshots.load(snapshots.begin("gone", str(uuid.uuid4())))) == 0


def test_migration_0009_adds_the_snapshot_tables_to_a_catalog_with_data(database_url: str):
    engine = make_engine(database_url)
    try:
        upgrade(engine, BASELINE)
        fill_baseline(engine)
        upgrade(engine, "0008")
        with engine.connect() as connection:
            before = connection.execute(sa.text("SELECT run_id, delivered FROM runs ORDER BY run_id")).all()
        upgrade(engine, "0009")
        upgrade(engine)
        catalog = CatalogStores.from_url(database_url)
        try:
            snapshots = SqlChangeSnapshots(catalog.database)
            run = snapshots.begin("nightly-gold", str(uuid.uuid4()))
            snapshots.stage(run, [Staging(ChangeKind.ADDED, None, [_member("m", 1)])])
            assert len(snapshots.load(run)) == 1
            assert catalog.runs.get_run(uuid.UUID(before[0][0])) is not None
        finally:
            catalog.close()
        downgrade(engine, "0008")
        assert current_revision(engine) == "0008"
        with engine.connect() as connection:
            assert "change_members" not in sa.inspect(connection).get_table_names()
            after = connection.execute(sa.text("SELECT run_id, delivered FROM runs ORDER BY run_id")).all()
        assert set(before) <= set(after)
    finally:
        engine.dispose()
