import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.domain.runs import RunRecord, fold
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    MemberBatch,
    RunRequested,
    RunStarted,
    Trigger,
    json_schemas,
)


def test_run_requested_round_trips_through_json():
    request = RunRequested(definition="gold", trigger=Trigger.MANUAL, requested_by="alice")
    decoded = RunRequested.model_validate_json(request.to_bytes())
    assert decoded == request
    assert decoded.schema_version == 1


def test_fields_added_by_a_newer_producer_are_ignored():
    decoded = RunRequested.model_validate_json(b'{"definition": "gold", "new_field": 1}')
    assert decoded.definition == "gold"


def test_an_unsupported_schema_version_is_refused():
    with pytest.raises(ValidationError, match="schema_version"):
        RunRequested.model_validate_json(b'{"definition": "gold", "schema_version": 2}')


def test_run_events_decode_to_their_own_type():
    run_id = uuid.uuid4()
    started = RunStarted(run_id=run_id, definition="d", trigger=Trigger.SCHEDULE)
    outcome = BatchOutcome(run_id=run_id, definition="d", batch_index=3, delivered=5, failed=0)
    assert isinstance(RUN_EVENT_ADAPTER.validate_json(started.to_bytes()), RunStarted)
    assert RUN_EVENT_ADAPTER.validate_json(outcome.to_bytes()) == outcome


def test_batch_identity_is_run_and_index():
    run_id = uuid.uuid4()
    batch = MemberBatch(run_id=run_id, definition="d", template="t", batch_index=7, members=[{"id": 1}])
    assert batch.identity == f"{run_id}:7"


def test_a_negative_batch_index_is_refused():
    with pytest.raises(ValidationError, match="batch_index"):
        MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=-1, members=[])


def test_every_event_type_has_a_json_schema():
    schemas = json_schemas()
    assert set(schemas) == {
        "run.requested",
        "run.range_requested",
        "member.batch",
        "run.started",
        "run.extraction_completed",
        "run.batch_outcome",
        "run.failed",
        "run.skipped",
        "run.missed",
        "run.cancelled",
        "circuit.changed",
        "dead_letter",
    }
    assert "definition" in schemas["run.requested"]["properties"]


def test_a_runs_record_keeps_the_time_it_was_requested():
    requested = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)
    run_id = uuid.uuid4()
    started = RunStarted(run_id=run_id, definition="vip", trigger=Trigger.EVENT, requested_at=requested)
    record = fold(RunRecord(run_id=run_id, definition="vip"), started)
    assert record.requested_at == requested
    earlier = RunRecord(run_id=run_id, definition="vip", requested_at=requested - timedelta(seconds=1))
    assert fold(earlier, started).requested_at == earlier.requested_at, "the first known time stays"


def test_a_run_request_names_a_definition_as_the_catalog_does_and_who_asked_in_at_most_200_characters():
    run_id = uuid.uuid4()
    # As releases before the bounds wrote it (every field they sent): it still decodes.
    written = (
        f'{{"type": "run.requested", "schema_version": 1, "run_id": "{run_id}", "definition": "gold-members-90-days",'
        f' "trigger": "schedule", "requested_at": "2026-11-30T08:15:42Z", "requested_by": "chain:{"a" * 100}",'
        ' "scheduled_for": null, "definition_id": null, "parameters": {}, "allow_mass_removal": false}'
    )
    assert RunRequested.model_validate_json(written).definition == "gold-members-90-days"
    for field, value in (("definition", "a" * 101), ("definition", "Gold Members"), ("requested_by", "x" * 201)):
        with pytest.raises(ValidationError) as refused:
            RunRequested.model_validate({"definition": "gold", field: value})
        assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_a_started_runs_requester_is_cut_to_200_characters_never_refused():
    """An event an older release published (its request unbounded) still decodes, and fits the runs' column."""
    event = {"type": "run.started", "run_id": str(uuid.uuid4()), "definition": "gold", "trigger": "event"}
    started = RUN_EVENT_ADAPTER.validate_python(event | {"requested_by": "/" + "s" * 422})
    assert isinstance(started, RunStarted)
    assert started.requested_by == "/" + "s" * 199
    assert RUN_EVENT_ADAPTER.validate_python(event).requested_by is None
