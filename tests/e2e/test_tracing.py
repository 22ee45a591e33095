"""Traces across the real pipeline: a run's trace, from its request's ``traceparent`` (or started by exportctl),
reaches every request the partner receives and the log lines of the services that handled the run."""

from __future__ import annotations

import json
import uuid

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from shared.domain.runs import RunStatus
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE, RunRequested
from tests.e2e.conftest import Pipeline
from tests.kafka_helpers import produce_with_headers
from tests.tracing_helpers import TRACEPARENT, json_lines, trace_id_of

pytestmark = pytest.mark.e2e


def _final_status(pipeline: Pipeline, run_id: uuid.UUID) -> RunStatus:
    def final() -> bool:
        record = pipeline.catalog.runs.get_run(run_id)
        return record is not None and record.status.is_final

    wait_until(final, timeout=120, what=f"run {run_id} to end")
    record = pipeline.catalog.runs.get_run(run_id)
    assert record is not None
    return record.status


def _trace_ids_received(receiver: HttpReceiver, run_id: uuid.UUID) -> list[str | None]:
    """The trace id of each request of the run the partner received (None where no traceparent came)."""
    receipts = [r for r in receiver.receipts() if r.headers["Idempotency-Key"].startswith(f"{run_id}:")]
    assert receipts, "the partner received the run's requests"
    return [trace_id_of(r.headers.get("traceparent")) for r in receipts]


def _trace_ids_logged(pipeline: Pipeline, service: str, run_id: uuid.UUID) -> list[str | None]:
    """The trace id of each of the service's log lines about the run."""
    lines = [line for line in json_lines(pipeline.services.log(service)) if line.get("run_id") == str(run_id)]
    assert lines, f"the {service} logged about the run"
    return [line.get("trace_id") for line in lines]


def test_a_run_request_s_traceparent_reaches_every_partner_request_and_the_logs(pipeline: Pipeline):
    run_id = uuid.uuid4()
    request = RunRequested(run_id=run_id, definition="small-to-strict-partner")
    produce_with_headers(
        pipeline.bootstrap,
        pipeline.topics.run_requests,
        [(str(run_id), request.to_bytes(), [("traceparent", TRACEPARENT.encode())])],
    )
    assert _final_status(pipeline, run_id) is RunStatus.FAILED  # the strict partner refuses every member

    trace_id = trace_id_of(TRACEPARENT)
    received = _trace_ids_received(pipeline.strict, run_id)
    assert set(received) == {trace_id}, "every request carries the run's trace"
    assert set(_trace_ids_logged(pipeline, "extractor", run_id)) == {trace_id}
    # The dispatcher logs each refusal, in the batch's trace.
    assert set(_trace_ids_logged(pipeline, "dispatcher", run_id)) == {trace_id}


def test_a_cloudevent_s_trace_extension_is_the_run_s_trace(pipeline: Pipeline):
    run_id = uuid.uuid4()
    trace_id = uuid.uuid4().hex
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", b"crm"),
        ("ce_type", RUN_REQUESTED_CLOUDEVENT_TYPE.encode()),
        ("ce_traceparent", f"00-{trace_id}-b7ad6b7169203331-01".encode()),
        ("content-type", b"application/json"),
    ]
    data = json.dumps({"definition": "small-to-good-partner", "run_id": str(run_id)}).encode()
    produce_with_headers(pipeline.bootstrap, pipeline.topics.run_requests, [(str(run_id), data, headers)])
    assert _final_status(pipeline, run_id) is RunStatus.SUCCEEDED

    assert set(_trace_ids_received(pipeline.good, run_id)) == {trace_id}
    assert set(_trace_ids_logged(pipeline, "extractor", run_id)) == {trace_id}


def test_a_run_started_by_exportctl_gets_a_new_trace_that_reaches_the_partner(pipeline: Pipeline):
    result = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = uuid.UUID(result.stdout.splitlines()[0].split()[1])  # "run <id> requested for '<definition>'"

    [trace_id] = set(_trace_ids_received(pipeline.good, run_id))
    assert trace_id is not None
    assert trace_id != trace_id_of(TRACEPARENT)
    assert set(_trace_ids_logged(pipeline, "extractor", run_id)) == {trace_id}


def test_a_run_request_with_a_malformed_traceparent_runs_in_a_trace_of_its_own(pipeline: Pipeline):
    run_id = uuid.uuid4()
    request = RunRequested(run_id=run_id, definition="small-to-good-partner")
    bad = [("traceparent", b"00-not-a-trace-01"), ("tracestate", b"\xff\xfe")]
    produce_with_headers(pipeline.bootstrap, pipeline.topics.run_requests, [(str(run_id), request.to_bytes(), bad)])
    assert _final_status(pipeline, run_id) is RunStatus.SUCCEEDED

    [trace_id] = set(_trace_ids_received(pipeline.good, run_id))
    assert trace_id is not None
    assert len(trace_id) == 32
    assert set(_trace_ids_logged(pipeline, "extractor", run_id)) == {trace_id}
