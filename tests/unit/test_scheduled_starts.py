"""When the extractor starts a scheduled run published ahead of its instant, and whether it still starts it."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.extractor.request_rounds import request_rounds
from services.extractor.scheduled_runs import StartTimes, overlap_skip, published_ahead, withdrawal
from shared.domain.catalog_objects import ExportDefinition
from shared.events import RangeRequested, RunRequested, Trigger
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.kafka.records import Round
from shared.outages import DependencyUnavailable
from shared.tracing import current_kafka_headers, in_span, start_span

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 29, 0, 59, 50, tzinfo=UTC)  # Paris springs forward at 01:00 UTC
SECOND = dt.timedelta(seconds=1)


def scheduled(due: dt.datetime, *, requested: dt.datetime | None = None, name: str = "d") -> RunRequested:
    return RunRequested(  # as the scheduler publishes it: naming its definition by id too
        definition=name,
        definition_id=uuid.uuid5(uuid.NAMESPACE_URL, name),
        trigger=Trigger.SCHEDULE,
        requested_by="scheduler",
        requested_at=requested or due - 5 * SECOND,
        scheduled_for=due,
    )


def definition(**schedule) -> ExportDefinition:
    return ExportDefinition.model_validate(
        {
            "name": "d",
            "query": "q",
            "template": "t",
            "schedule": {"enabled": True, "timezone": "Europe/Paris", "repeat": {"every": "day", "time": "02:30"}}
            | schedule,
        }
    )


def start_times(max_wait: float = 60) -> StartTimes:
    return StartTimes(max_wait=dt.timedelta(seconds=max_wait), now=lambda: NOW, monotonic=lambda: 1000.0)


def early_starts() -> float:
    return REGISTRY.get_sample_value("member_export_extractor_scheduled_runs_started_early_total") or 0.0


@given(ahead_ms=st.integers(1, 60_000))
def test_a_run_due_later_is_held_until_its_instant(ahead_ms: int):
    hold = start_times().hold(scheduled(NOW + dt.timedelta(milliseconds=ahead_ms)))
    assert isinstance(hold, HoldRecord)
    assert hold.until == pytest.approx(1000.0 + ahead_ms / 1000)


@pytest.mark.parametrize(
    "request_",
    [
        scheduled(NOW),
        scheduled(NOW - 3 * SECOND),
        RunRequested(definition="d"),  # on demand
        RangeRequested(run_id=uuid.uuid4(), definition="d", range_index=0, ranges=2),
    ],
    ids=["due-now", "due-before", "on-demand", "range"],
)
def test_a_request_due_now_before_or_never_starts_at_once(request_):
    assert start_times().hold(request_) is None


def test_a_run_due_further_ahead_than_the_extractor_waits_starts_when_received_and_is_counted():
    before = early_starts()
    assert start_times(max_wait=60).hold(scheduled(NOW + 61 * SECOND)) is None
    assert start_times(max_wait=0).hold(scheduled(NOW + SECOND)) is None
    assert early_starts() - before == 2


def test_only_a_scheduled_run_requested_before_its_instant_was_published_ahead():
    assert published_ahead(scheduled(NOW))
    assert not published_ahead(scheduled(NOW, requested=NOW))  # fired when due (no lookahead, or late)
    assert not published_ahead(scheduled(NOW, requested=NOW + SECOND))
    assert not published_ahead(RunRequested(definition="d", scheduled_for=NOW, requested_at=NOW - SECOND))
    # Another system's request with trigger "schedule" names no definition id: it waits, is never withdrawn.
    assert not published_ahead(scheduled(NOW).model_copy(update={"definition_id": None}))


def test_a_run_whose_definition_changed_meanwhile_is_withdrawn_with_the_reason():
    # 02:30 does not exist in Paris on 29 March: the daily 02:30 run is due at 03:00 CEST, 01:00 UTC (so is 02:45).
    due = dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert withdrawal(scheduled(due), definition()) is None
    assert withdrawal(scheduled(due), None) == "deleted"
    assert withdrawal(scheduled(due), definition(enabled=False)) == "disabled"
    assert withdrawal(scheduled(due), definition(repeat={"every": "day", "time": "03:15"})) == "rescheduled"
    assert withdrawal(scheduled(due), definition(repeat={"every": "day", "time": "02:45"})) is None
    assert withdrawal(scheduled(due), definition(timezone="UTC", repeat={"every": "day", "time": "01:00"})) is None
    assert withdrawal(scheduled(due + SECOND), definition()) == "rescheduled"


def test_a_run_published_ahead_is_skipped_only_when_another_run_is_active_and_its_policy_skips():
    request = scheduled(dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    other = uuid.uuid4()
    skipped = overlap_skip(request, definition(), other)
    assert skipped is not None
    assert (skipped.run_id, skipped.scheduled_for) == (request.run_id, request.scheduled_for)
    assert skipped.reason == f"previous run {other} was still active"
    assert overlap_skip(request, definition(), None) is None
    assert overlap_skip(request, definition(), request.run_id) is None  # itself, resumed
    assert overlap_skip(request, definition(overlap="allow"), other) is None


class Handler:
    """Handles requests, remembering each one's trace; raises what it is told to for a definition."""

    def __init__(self, raises: dict[str, Exception] | None = None) -> None:
        self.raises = raises or {}
        self.handled: list[tuple[str, list[tuple[str, bytes]]]] = []

    def __call__(self, request: RunRequested | RangeRequested) -> list[Outgoing]:
        self.handled.append((request.definition, current_kafka_headers()))
        if request.definition in self.raises:
            raise self.raises[request.definition]
        return [Outgoing("events", str(request.run_id), request.definition.encode())]


def test_a_round_holds_a_run_due_later_and_handles_the_next_in_its_own_trace():
    handler = Handler()
    later, now = scheduled(NOW + 10 * SECOND, name="later"), RunRequested(definition="now")
    span = start_span("process", parent=None)
    results = request_rounds(handler, start_times().hold, lambda: False)(Round([later, now], [None, in_span(span)]))
    span.end()
    assert isinstance(results[0], HoldRecord)
    assert results[1] == [Outgoing("events", str(now.run_id), b"now")]
    assert [name for name, _ in handler.handled] == ["now"]
    [(_, headers)] = handler.handled
    assert dict(headers)["traceparent"].decode().split("-")[1] == f"{span.get_span_context().trace_id:032x}"


def test_after_an_outage_the_rest_of_the_round_is_handed_back_and_a_failure_stays_its_own():
    outage = DependencyUnavailable("member store unreachable")
    handler = Handler({"broken": ValueError("bad"), "outage": outage})
    requests = [RunRequested(definition=name) for name in ("broken", "fine", "outage", "after")]
    results = request_rounds(handler, start_times().hold, lambda: False)(requests)
    assert isinstance(results[0], ValueError)
    assert results[1] == [Outgoing("events", str(requests[1].run_id), b"fine")]
    assert results[2] is outage
    assert results[3] is outage
    assert [name for name, _ in handler.handled] == ["broken", "fine", "outage"]


def test_once_stopping_no_further_request_is_begun():
    handler = Handler()
    stopping = iter([False, True])
    requests = [RunRequested(definition="first"), RunRequested(definition="second")]
    results = request_rounds(handler, start_times().hold, lambda: next(stopping))(requests)
    assert isinstance(results[1], HoldRecord)
    assert [name for name, _ in handler.handled] == ["first"]
