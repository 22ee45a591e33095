"""What one event may carry, whoever made it: reasons cut to 4,000 characters and counts within the catalog's INTEGER
columns (s54: a run request with thousands of unknown parameter names gave an 890,065-character run failure, a 1.8 MB
email; a count over 2**31-1 folded on SQLite and failed on PostgreSQL, leaving the run dispatching)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from services.notifier.emails import compose
from services.notifier.webhook_messages import run_message
from shared.domain.catalog_objects import ExportDefinition, WebhookChannel
from shared.domain.query_parameters import ParameterError, QueryParameter, bind_values
from shared.domain.runs import RunRecord, fold
from shared.events import (
    COUNT_MAX,
    REASON_MAX_CHARS,
    RUN_EVENTS_RECORD_ADAPTER,
    BatchOutcome,
    RefusedMember,
    RunFailed,
    RunStarted,
    Trigger,
)
from shared.kafka.loop import Rejection, decode_record, value_decoder

RUN = uuid.uuid4()
DEFINITION = ExportDefinition.model_validate({"name": "nightly", "query": "gold", "template": "upsert"})
#: The hunt's run request: 10,000 unknown parameters of 87 characters each (920 KB, under Kafka's 1 MB).
UNKNOWN = {f"k{i:06d}" + "x" * 80: 1 for i in range(10_000)}


def test_thousands_of_unknown_parameters_are_named_five_each_cut_and_counted():
    with pytest.raises(ParameterError) as refused:
        bind_values({"tier": QueryParameter()}, UNKNOWN)
    message = str(refused.value)
    assert len(message) < 600, len(message)  # was 890,040 characters
    assert message.startswith("unknown parameter(s) k000000" + "x" * 33 + "… (47 more characters), k000001")
    assert message.endswith(" and 9995 more (10000 in all); the query declares: tier")


def test_a_run_failure_is_cut_where_it_is_made_and_where_it_is_read_and_so_in_the_record_email_and_webhook():
    reason = "invalid parameters: " + "y" * 900_000
    made = RunFailed(run_id=RUN, definition="nightly", reason=reason)
    read = RUN_EVENTS_RECORD_ADAPTER.validate_json(json.dumps({**made.model_dump(mode="json"), "reason": reason}))
    for event in (made, read):
        assert isinstance(event, RunFailed)
        assert len(event.reason) <= REASON_MAX_CHARS
        assert event.reason.startswith("invalid parameters: yyy")
        assert event.reason.endswith(f"… ({len(reason) - (REASON_MAX_CHARS - 40)} more characters)")
    started = RunStarted(run_id=RUN, definition="nightly", trigger=Trigger.EVENT)
    record = fold(fold(RunRecord(run_id=RUN, definition="nightly"), started), read)  # type: ignore[arg-type]
    assert record.failure_reason == made.reason
    assert record.error_samples == (made.reason,)
    email = compose(definition=DEFINITION, record=record, kind="error", sender="a@b.c", recipients=["o@example.com"])
    assert len(email.as_bytes()) < 20_000  # was 1,827,875 bytes
    hook = run_message(
        definition=DEFINITION,
        channel_name="ops",
        channel=WebhookChannel(url="https://hooks.example.com/x"),
        event="failed",
        record=record,
        now=datetime.now(UTC),
    )
    assert len(hook.body) < 10_000  # was 890,490 bytes


def test_a_batchs_error_and_a_refused_members_reason_are_cut_the_same_way():
    long = "HTTP 400: " + "z" * 10_000
    outcome = BatchOutcome(
        run_id=RUN,
        definition="nightly",
        batch_index=0,
        delivered=0,
        failed=1,
        error=long,
        refused=[RefusedMember(key="1", reason=long)],
    )
    assert outcome.error is not None
    assert len(outcome.error) <= REASON_MAX_CHARS
    assert outcome.refused[0].reason == outcome.error
    assert BatchOutcome.model_validate(outcome.model_dump() | {"error": "short"}).error == "short"


def _decoded(event: dict[str, object]) -> object:
    return decode_record(value_decoder(RUN_EVENTS_RECORD_ADAPTER.validate_json), json.dumps(event).encode(), None)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "run.batch_outcome", "batch_index": 0, "delivered": COUNT_MAX + 1, "failed": 0}, "delivered"),
        ({"type": "run.batch_outcome", "batch_index": 0, "delivered": 0, "failed": 2**63}, "failed"),
        ({"type": "run.batch_outcome", "batch_index": 2**31, "delivered": 1, "failed": 0}, "batch_index"),
        ({"type": "run.batch_outcome", "batch_index": 0, "delivered": 1, "failed": 0, "status_code": 2**40}, "status"),
        ({"type": "run.extraction_completed", "members": COUNT_MAX + 1, "batches": 1}, "members"),
        ({"type": "run.extraction_completed", "members": 1, "batches": 2**31}, "batches"),
        ({"type": "run.extraction_completed", "members": 1, "batches": 1, "retries": 2**31}, "retries"),
        ({"type": "run.extraction_completed", "members": 1, "batches": 1, "changes": {"added": 2**31}}, "added"),
    ],
)
def test_a_count_beyond_the_catalogs_integer_columns_is_refused_naming_the_field(event: dict[str, object], field: str):
    """Dead-lettered with this reason by the consumer, on SQLite as on PostgreSQL (before: folded on SQLite, a
    ``DataError`` on PostgreSQL and the run left dispatching)."""
    rejection = _decoded({"run_id": str(RUN), "definition": "nightly", **event})
    assert isinstance(rejection, Rejection)
    assert rejection.reason.startswith("invalid event: ")
    assert field in rejection.reason
    assert "less than or equal to 2147483647" in rejection.reason
    at_most = _decoded({"run_id": str(RUN), "definition": "nightly", **event} | {field: COUNT_MAX})
    if field in {"delivered", "failed", "batch_index", "members", "batches", "retries"}:
        assert not isinstance(at_most, Rejection), at_most


def test_a_runs_totals_stop_at_the_largest_count_a_column_holds():
    record = fold(
        RunRecord(run_id=RUN, definition="nightly"), RunStarted(run_id=RUN, definition="n", trigger=Trigger.EVENT)
    )
    for index in range(2):
        record = fold(
            record, BatchOutcome(run_id=RUN, definition="n", batch_index=index, delivered=COUNT_MAX, failed=1)
        )
    assert (record.delivered, record.failed, record.batches_done) == (COUNT_MAX, 2, 2)
