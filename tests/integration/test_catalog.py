"""The catalog on SQLite and on a real PostgreSQL."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.catalog import CatalogStores, NotFound
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, SavedQuery
from shared.domain.checkpoints import Checkpoint
from shared.domain.runs import RunStatus
from shared.events import AnyRunEvent, BatchOutcome, ExtractionCompleted, RunStarted, Trigger

pytestmark = pytest.mark.integration


def test_apply_creates_updates_and_reports_unchanged(catalog: CatalogStores):
    query = SavedQuery(name="gold", sql="SELECT * FROM members WHERE tier = 'gold'")
    assert catalog.definitions.apply(query) == "created"
    assert catalog.definitions.apply(query) == "unchanged"
    changed = query.model_copy(update={"description": "Gold tier"})
    assert catalog.definitions.apply(changed) == "updated"
    assert catalog.definitions.get(SavedQuery, "gold") == changed


def test_ids_survive_updates(catalog: CatalogStores):
    definition = ExportDefinition(name="d", query="q", template="t")
    catalog.definitions.apply(definition)
    first_id, _ = catalog.definitions.get_with_id(ExportDefinition, "d")
    catalog.definitions.apply(definition.model_copy(update={"business_unit": "fr"}))
    assert catalog.definitions.get_with_id(ExportDefinition, "d")[0] == first_id


def test_secrets_are_stored_and_read_back(catalog: CatalogStores):
    profile = ConnectionProfile(
        name="p",
        base_url="https://api.example.com",
        auth={"type": "basic", "username": "u", "password": "env:PARTNER_PASSWORD"},
    )
    catalog.definitions.apply(profile)
    assert catalog.definitions.get(ConnectionProfile, "p") == profile


def test_missing_objects_are_named(catalog: CatalogStores):
    with pytest.raises(NotFound, match="SavedQuery 'nope' does not exist"):
        catalog.definitions.get(SavedQuery, "nope")


def test_only_enabled_schedules_are_listed(catalog: CatalogStores):
    catalog.definitions.apply(
        ExportDefinition(name="on", query="q", template="t", schedule={"enabled": True, "cron": "0 2 * * *"})
    )
    catalog.definitions.apply(ExportDefinition(name="off", query="q", template="t", schedule={"cron": "0 2 * * *"}))
    assert [d.name for _, d in catalog.definitions.scheduled_definitions()] == ["on"]


def test_run_accounting_counts_each_batch_once(catalog: CatalogStores):
    run_id = uuid.uuid4()
    catalog.runs.fold_run_event(RunStarted(run_id=run_id, definition="d", trigger=Trigger.MANUAL))
    catalog.runs.fold_run_event(ExtractionCompleted(run_id=run_id, definition="d", members=30, batches=2))
    first = BatchOutcome(run_id=run_id, definition="d", batch_index=0, delivered=15, failed=0)
    catalog.runs.fold_run_event(first)
    catalog.runs.fold_run_event(first)  # redelivered
    before, after = catalog.runs.fold_run_event(
        BatchOutcome(run_id=run_id, definition="d", batch_index=1, delivered=10, failed=5, error="HTTP 400")
    )
    assert before is not None
    assert before.status == RunStatus.DISPATCHING
    assert (after.status, after.delivered, after.failed) == (RunStatus.COMPLETED_WITH_ERRORS, 25, 5)
    stored = catalog.runs.get_run(run_id)
    assert stored == after
    assert catalog.runs.list_runs("d")[0].run_id == run_id


def test_a_notification_is_claimed_until_it_is_marked_sent(catalog: CatalogStores):
    run_id = uuid.uuid4()
    assert catalog.runs.claim_notification(run_id, "success", ["ops@example.com"])
    catalog.runs.mark_notification(run_id, "success", error="SMTPServerDisconnected")
    assert catalog.runs.claim_notification(run_id, "success", ["ops@example.com"])
    catalog.runs.mark_notification(run_id, "success")
    assert not catalog.runs.claim_notification(run_id, "success", ["ops@example.com"])
    assert catalog.runs.notifications(run_id)["success"] is not None


def test_extraction_checkpoints_resume_and_complete(catalog: CatalogStores):
    run_id = uuid.uuid4()
    fresh = catalog.extraction.claim_extraction(run_id, "d")
    assert (fresh.last_key, fresh.next_batch_index, fresh.completed) == (None, 0, False)
    catalog.extraction.save_checkpoint(Checkpoint(run_id, 5000, 10, 5000, completed=False))
    resumed = catalog.extraction.claim_extraction(run_id, "d")
    assert (resumed.last_key, resumed.next_batch_index, resumed.members) == (5000, 10, 5000)
    catalog.extraction.save_checkpoint(Checkpoint(run_id, 7000, 14, 7000, completed=True))
    assert catalog.extraction.claim_extraction(run_id, "d").completed


def test_two_catalog_instances_share_state(database_url: str):
    writer, reader = (
        CatalogStores.from_url(database_url, migrate=True),
        CatalogStores.from_url(database_url, migrate=True),
    )
    writer.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    assert reader.definitions.get(SavedQuery, "q").sql == "select 1 as id"
    writer.close()
    reader.close()


_outcomes = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(_outcomes, min_size=1, max_size=3), data=st.data())
def test_a_poll_folded_at_once_gives_the_records_of_folding_its_events_one_by_one(
    catalog: CatalogStores, runs: list[list[tuple[int, int]]], data: st.DataObject
):
    events: list[AnyRunEvent] = []
    for outcomes in runs:
        run_id = uuid.uuid4()
        events.append(RunStarted(run_id=run_id, definition="d", trigger=Trigger.MANUAL))
        events.append(ExtractionCompleted(run_id=run_id, definition="d", members=0, batches=len(outcomes)))
        events += [
            BatchOutcome(run_id=run_id, definition="d", batch_index=i, delivered=d, failed=f, error="x" if f else None)
            for i, (d, f) in enumerate(outcomes)
        ]
    # Redeliveries and any order, split into polls as a consumer would get them.
    events += data.draw(st.lists(st.sampled_from(events), max_size=6))
    events = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(events)))
    one_by_one = CatalogStores.from_url("sqlite://", migrate=True)  # in memory: the reference
    for event in events:
        one_by_one.runs.fold_run_event(event)
    catalog.runs.fold_run_events(events[:cut])
    catalog.runs.fold_run_events(events[cut:])
    for run_id in {event.run_id for event in events}:
        expected, got = one_by_one.runs.get_run(run_id), catalog.runs.get_run(run_id)
        assert expected is not None
        assert got is not None
        assert (got.status, got.extracted, got.delivered, got.failed, got.batches_done) == (
            expected.status,
            expected.extracted,
            expected.delivered,
            expected.failed,
            expected.batches_done,
        )
    one_by_one.close()
