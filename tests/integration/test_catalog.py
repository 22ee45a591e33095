"""The catalog on SQLite and on a real PostgreSQL."""

import uuid

import pytest

from shared.catalog import Catalog, NotFound
from shared.catalog.repository import Checkpoint
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, SavedQuery
from shared.domain.runs import RunStatus
from shared.events import BatchOutcome, ExtractionCompleted, RunStarted, Trigger

pytestmark = pytest.mark.integration


def test_apply_creates_updates_and_reports_unchanged(catalog: Catalog):
    query = SavedQuery(name="gold", sql="SELECT * FROM members WHERE tier = 'gold'")
    assert catalog.apply(query) == "created"
    assert catalog.apply(query) == "unchanged"
    changed = query.model_copy(update={"description": "Gold tier"})
    assert catalog.apply(changed) == "updated"
    assert catalog.get(SavedQuery, "gold") == changed


def test_ids_survive_updates(catalog: Catalog):
    definition = ExportDefinition(name="d", query="q", template="t")
    catalog.apply(definition)
    first_id, _ = catalog.get_with_id(ExportDefinition, "d")
    catalog.apply(definition.model_copy(update={"business_unit": "fr"}))
    assert catalog.get_with_id(ExportDefinition, "d")[0] == first_id


def test_secrets_are_stored_and_read_back(catalog: Catalog):
    profile = ConnectionProfile(
        name="p",
        base_url="https://api.example.com",
        auth={"type": "basic", "username": "u", "password": "env:PARTNER_PASSWORD"},
    )
    catalog.apply(profile)
    assert catalog.get(ConnectionProfile, "p") == profile


def test_missing_objects_are_named(catalog: Catalog):
    with pytest.raises(NotFound, match="SavedQuery 'nope' does not exist"):
        catalog.get(SavedQuery, "nope")


def test_only_enabled_schedules_are_listed(catalog: Catalog):
    catalog.apply(ExportDefinition(name="on", query="q", template="t", schedule={"enabled": True, "cron": "0 2 * * *"}))
    catalog.apply(ExportDefinition(name="off", query="q", template="t", schedule={"cron": "0 2 * * *"}))
    assert [d.name for _, d in catalog.scheduled_definitions()] == ["on"]


def test_run_accounting_counts_each_batch_once(catalog: Catalog):
    run_id = uuid.uuid4()
    catalog.fold_run_event(RunStarted(run_id=run_id, definition="d", trigger=Trigger.MANUAL))
    catalog.fold_run_event(ExtractionCompleted(run_id=run_id, definition="d", members=30, batches=2))
    first = BatchOutcome(run_id=run_id, definition="d", batch_index=0, delivered=15, failed=0)
    catalog.fold_run_event(first)
    catalog.fold_run_event(first)  # redelivered
    before, after = catalog.fold_run_event(
        BatchOutcome(run_id=run_id, definition="d", batch_index=1, delivered=10, failed=5, error="HTTP 400")
    )
    assert before is not None
    assert before.status == RunStatus.DISPATCHING
    assert (after.status, after.delivered, after.failed) == (RunStatus.COMPLETED_WITH_ERRORS, 25, 5)
    stored = catalog.get_run(run_id)
    assert stored == after
    assert catalog.list_runs("d")[0].run_id == run_id


def test_a_notification_is_claimed_until_it_is_marked_sent(catalog: Catalog):
    run_id = uuid.uuid4()
    assert catalog.claim_notification(run_id, "success", ["ops@example.com"])
    catalog.mark_notification(run_id, "success", error="SMTPServerDisconnected")
    assert catalog.claim_notification(run_id, "success", ["ops@example.com"])
    catalog.mark_notification(run_id, "success")
    assert not catalog.claim_notification(run_id, "success", ["ops@example.com"])
    assert catalog.notifications(run_id)["success"] is not None


def test_extraction_checkpoints_resume_and_complete(catalog: Catalog):
    run_id = uuid.uuid4()
    fresh = catalog.claim_extraction(run_id, "d")
    assert (fresh.last_key, fresh.next_batch_index, fresh.completed) == (None, 0, False)
    catalog.save_checkpoint(Checkpoint(run_id, 5000, 10, 5000, completed=False))
    resumed = catalog.claim_extraction(run_id, "d")
    assert (resumed.last_key, resumed.next_batch_index, resumed.members) == (5000, 10, 5000)
    catalog.save_checkpoint(Checkpoint(run_id, 7000, 14, 7000, completed=True))
    assert catalog.claim_extraction(run_id, "d").completed


def test_two_catalog_instances_share_state(database_url: str):
    writer, reader = Catalog.from_url(database_url), Catalog.from_url(database_url)
    writer.apply(SavedQuery(name="q", sql="select 1 as id"))
    assert reader.get(SavedQuery, "q").sql == "select 1 as id"
    writer.close()
    reader.close()
