"""The fold of run events: exact counts whatever the order and duplication of events."""

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.runs import (
    RunRecord,
    RunStatus,
    consecutive_failures,
    failure_threshold_reason,
    fold,
    stuck_reason,
)
from shared.events import BatchOutcome, ExtractionCompleted, RunCancelled, RunFailed, RunStarted, Trigger

RUN = uuid.UUID("00000000-0000-0000-0000-000000000001")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run_events(outcomes: list[tuple[int, int]]):
    events: list[RunStarted | ExtractionCompleted | BatchOutcome | RunFailed] = [
        RunStarted(run_id=RUN, definition="d", trigger=Trigger.MANUAL, at=T0)
    ]
    events.append(
        ExtractionCompleted(
            run_id=RUN,
            definition="d",
            members=sum(d + f for d, f in outcomes),
            batches=len(outcomes),
            at=T0 + timedelta(seconds=1),
        )
    )
    for index, (delivered, failed) in enumerate(outcomes):
        events.append(
            BatchOutcome(
                run_id=RUN,
                definition="d",
                batch_index=index,
                delivered=delivered,
                failed=failed,
                error="HTTP 400: bad" if failed else None,
                at=T0 + timedelta(seconds=2 + index),
            )
        )
    return events


def fold_all(events) -> RunRecord:
    """Fold as the notifier does: a batch outcome counts once per batch index."""
    record = RunRecord(run_id=RUN, definition="d")
    seen: set[int] = set()
    for event in events:
        duplicate = isinstance(event, BatchOutcome) and event.batch_index in seen
        if isinstance(event, BatchOutcome):
            seen.add(event.batch_index)
        record = fold(record, event, duplicate=duplicate)
    return record


outcome_lists = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=0, max_size=12)


@settings(max_examples=300)
@given(outcomes=outcome_lists, data=st.data())
def test_any_order_and_any_duplication_fold_to_the_same_record(outcomes, data):
    events = run_events(outcomes)
    reference = fold_all(events)
    duplicated = events + data.draw(st.lists(st.sampled_from(events), max_size=10))
    shuffled = data.draw(st.permutations(duplicated))
    record = fold_all(shuffled)
    assert (record.status, record.delivered, record.failed, record.extracted, record.batches_done) == (
        reference.status,
        reference.delivered,
        reference.failed,
        reference.extracted,
        reference.batches_done,
    )
    assert record.delivered + record.failed == record.extracted
    assert record.finished_at == reference.finished_at


def test_status_follows_the_counts():
    assert fold_all(run_events([(10, 0), (10, 0)])).status == RunStatus.SUCCEEDED
    assert fold_all(run_events([(10, 0), (0, 10)])).status == RunStatus.COMPLETED_WITH_ERRORS
    assert fold_all(run_events([(0, 10), (0, 10)])).status == RunStatus.FAILED
    assert fold_all(run_events([])).status == RunStatus.SUCCEEDED


def test_a_run_is_dispatching_until_every_batch_has_an_outcome():
    events = run_events([(10, 0), (10, 0)])
    record = fold_all(events[:-1])
    assert record.status == RunStatus.DISPATCHING
    assert record.finished_at is None


def test_a_run_is_extracting_until_extraction_completes():
    events = run_events([(10, 0)])
    assert fold_all([events[0], events[2]]).status == RunStatus.EXTRACTING


def test_a_failed_run_keeps_its_reason_and_finish_time():
    failed = RunFailed(run_id=RUN, definition="d", reason="query 'q' failed: no such table", at=T0)
    record = fold_all([failed])
    assert record.status == RunStatus.FAILED
    assert record.failure_reason == "query 'q' failed: no such table"
    assert record.finished_at == T0
    later = fold(record, RunStarted(run_id=RUN, definition="d", trigger=Trigger.MANUAL, at=T0 + timedelta(1)))
    assert later.finished_at == T0


def test_error_samples_are_bounded_and_distinct():
    outcomes = [(0, 1)] * 20
    events = run_events(outcomes)
    events = [
        e.model_copy(update={"error": f"HTTP 400: member {i}"}) if isinstance(e, BatchOutcome) else e
        for i, e in enumerate(events)
    ]
    record = fold_all(events)
    assert len(record.error_samples) == 5
    assert len(set(record.error_samples)) == 5


# --- failure policy and stuck runs (pure) --------------------------------------------------------------


def _finished(delivered: int, failed: int) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4(),
        definition="d",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        extraction_complete=True,
        extracted=delivered + failed,
        batches_expected=1,
        batches_done=1,
        delivered=delivered,
        failed=failed,
    )


@given(st.integers(1, 10_000), st.integers(1, 10_000), st.floats(0, 100))
def test_the_threshold_fails_exactly_the_runs_over_it(delivered, failed, threshold):
    reason = failure_threshold_reason(_finished(delivered, failed), threshold)
    assert (reason is not None) == (100.0 * failed / (delivered + failed) > threshold)


def test_the_threshold_leaves_succeeded_and_failed_runs_alone():
    assert failure_threshold_reason(_finished(10, 0), 0) is None
    assert failure_threshold_reason(_finished(0, 10), 0) is None  # already failed
    assert failure_threshold_reason(_finished(9, 1), None) is None


def test_consecutive_failures_skip_skipped_and_missed_runs():
    s = RunStatus
    assert consecutive_failures([s.FAILED, s.SKIPPED, s.FAILED, s.MISSED, s.FAILED, s.SUCCEEDED, s.FAILED]) == 3
    assert consecutive_failures([s.COMPLETED_WITH_ERRORS, s.FAILED]) == 0
    assert consecutive_failures([]) == 0


def test_a_run_is_stuck_only_after_the_quiet_period_and_only_while_unfinished():
    started = RunRecord(
        run_id=uuid.uuid4(),
        definition="d",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        last_event_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert stuck_reason(started, datetime(2026, 1, 1, 0, 59, tzinfo=UTC), 3600) is None
    reason = stuck_reason(started, datetime(2026, 1, 1, 1, 0, tzinfo=UTC), 3600)
    assert reason == "stuck: no progress for 3600 s while extracting (read 0, delivered 0, failed 0)"
    assert stuck_reason(_finished(1, 0), datetime(2027, 1, 1, tzinfo=UTC), 1) is None


def test_cancelling_stops_an_unfinished_run_and_is_too_late_for_a_finished_one():
    run_id = uuid.uuid4()
    started = fold(
        RunRecord(run_id=run_id, definition="d"), RunStarted(run_id=run_id, definition="d", trigger="manual")
    )
    cancelled = fold(started, RunCancelled(run_id=run_id, definition="d", requested_by="ops"))
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.error_samples == ("cancelled by ops",)
    done = fold(started, ExtractionCompleted(run_id=run_id, definition="d", members=0, batches=0))
    assert fold(done, RunCancelled(run_id=run_id, definition="d")).status is RunStatus.SUCCEEDED


def test_a_cancelled_run_stays_cancelled_when_its_extraction_completes_after_the_cancel():
    # The extractor checks for a cancel before each page but the first: a cancel landing during a run's last
    # page lets its extraction.completed (and its batches' outcomes) follow the cancel.
    run_id = uuid.uuid4()
    started = fold(
        RunRecord(run_id=run_id, definition="d"), RunStarted(run_id=run_id, definition="d", trigger="manual")
    )
    cancelled = fold(started, RunCancelled(run_id=run_id, definition="d", requested_by="ops"))
    completed = fold(cancelled, ExtractionCompleted(run_id=run_id, definition="d", members=3, batches=1))
    assert completed.status is RunStatus.CANCELLED
    assert completed.finished_at == cancelled.finished_at
    delivered = fold(completed, BatchOutcome(run_id=run_id, definition="d", batch_index=0, delivered=3, failed=0))
    assert delivered.status is RunStatus.CANCELLED
    assert (delivered.extracted, delivered.delivered, delivered.finished_at) == (3, 3, cancelled.finished_at)
