"""Trace context read from headers and CloudEvents (a bad one ignored, never fatal), carried into records, HTTP
headers and log lines."""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.extractor.run_request_decoding import decode_run_request
from shared import tracing
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE, RunRequested
from shared.kafka.loop import decode_record
from shared.kafka.records import Round, round_contexts
from shared.kafka.trace_context import decoded_in_context
from shared.log import add_trace_ids
from tests.tracing_helpers import PARENT_SPAN_ID, TRACE_ID, TRACEPARENT, collected_spans

OTHER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

MALFORMED = [
    "",
    "garbage",
    f"00-{TRACE_ID}-{PARENT_SPAN_ID}",  # no flags
    f"00-{'0' * 32}-{PARENT_SPAN_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_SPAN_ID}-01",  # the forbidden version
    f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01-extra",  # version 00 has nothing after the flags
    f"00-{TRACE_ID.upper()}-{PARENT_SPAN_ID}-01",  # upper-case hex
    "00-" + "a" * 600,  # far too long
]


def _ids(context) -> tuple[str, str]:
    span_context = trace.get_current_span(context).get_span_context()
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def test_a_valid_traceparent_names_its_trace_and_parent_span():
    assert _ids(tracing.context_from(TRACEPARENT)) == (TRACE_ID, PARENT_SPAN_ID)
    assert _ids(tracing.context_from(TRACEPARENT.encode(), b"vendor=value")) == (TRACE_ID, PARENT_SPAN_ID)


@pytest.mark.parametrize("traceparent", [*MALFORMED, b"\xff\xfe not ascii", 42, None])
def test_a_malformed_traceparent_is_ignored(traceparent):
    assert tracing.context_from(traceparent) is None


def test_record_headers_are_read_in_any_case_and_only_the_first_counts():
    headers = [("TraceParent", TRACEPARENT.encode()), ("traceparent", OTHER_TRACEPARENT.encode())]
    assert _ids(tracing.context_from_headers(headers)) == (TRACE_ID, PARENT_SPAN_ID)
    assert tracing.context_from_headers([("traceparent", b"garbage")]) is None
    assert tracing.context_from_headers(None) is None


def test_a_record_keeps_its_own_traceparent_and_gets_the_trace_otherwise():
    trace_headers = [("traceparent", TRACEPARENT.encode())]
    own = [("traceparent", OTHER_TRACEPARENT.encode())]
    assert tracing.with_trace((), trace_headers) == trace_headers
    assert tracing.with_trace(own, trace_headers) == own
    assert tracing.with_trace([("content-type", b"x")], trace_headers) == [("content-type", b"x"), *trace_headers]


def test_a_span_continues_the_parent_and_its_headers_carry_it():
    with collected_spans() as spans:
        span = tracing.start_span("work", parent=tracing.context_from(TRACEPARENT, "vendor=value"))
        headers = tracing.kafka_headers(span)
        with tracing.attached(tracing.in_span(span)):
            http = tracing.current_http_headers()
        span.end()
    span_id = f"{span.get_span_context().span_id:016x}"
    assert headers == [("traceparent", f"00-{TRACE_ID}-{span_id}-01".encode()), ("tracestate", b"vendor=value")]
    assert http == {"traceparent": f"00-{TRACE_ID}-{span_id}-01", "tracestate": "vendor=value"}
    [finished] = spans.get_finished_spans()
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == PARENT_SPAN_ID


def test_work_without_a_parent_starts_a_new_trace_even_inside_another():
    outer = tracing.start_span("outer", parent=None)
    with tracing.attached(tracing.in_span(outer)):
        inner = tracing.start_span("inner", parent=None)
    assert inner.get_span_context().is_valid
    assert inner.get_span_context().trace_id != outer.get_span_context().trace_id
    inner.end()
    outer.end()


def test_outside_a_trace_nothing_is_carried():
    assert tracing.current_http_headers() == {}
    assert tracing.current_kafka_headers() == []


def test_log_lines_inside_a_trace_carry_its_ids_and_others_none():
    span = tracing.start_span("work", parent=tracing.context_from(TRACEPARENT))
    with tracing.attached(tracing.in_span(span)):
        inside = add_trace_ids(None, "info", {"event": "x"})
    span.end()
    assert inside["trace_id"] == TRACE_ID
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_publishing_starts_a_trace_and_continues_the_current_one():
    with collected_spans() as spans:
        with tracing.publishing("send run-requests", {"member_export.run_id": "r"}) as headers:
            pass
        parent = tracing.start_span("caller", parent=tracing.context_from(TRACEPARENT))
        with tracing.attached(tracing.in_span(parent)), tracing.publishing("send run-requests", {}) as nested:
            pass
        parent.end()
        fresh = tracing.new_trace("send run-requests", {"member_export.run_id": "s"})
    started, continued, _, scheduled = spans.get_finished_spans()
    assert started.parent is None
    assert started.kind is SpanKind.PRODUCER
    assert headers == [("traceparent", tracing.traceparent_of(started.context).encode())]
    assert continued.context.trace_id == int(TRACE_ID, 16)
    assert nested == [("traceparent", tracing.traceparent_of(continued.context).encode())]
    assert scheduled.parent is None
    assert fresh[0][1] == tracing.traceparent_of(scheduled.context).encode()


def test_a_span_per_request_exists_only_while_spans_are_exported(monkeypatch: pytest.MonkeyPatch):
    with tracing.exported_span("POST", SpanKind.CLIENT, {}) as span:
        assert not span.is_recording()
    monkeypatch.setattr(tracing, "_exporting", True)
    with (
        collected_spans() as spans,
        tracing.exported_span("POST", SpanKind.CLIENT, {"http.request.method": "POST"}) as span,
    ):
        tracing.record_http_result(span, 503, False, 3, "HTTP 503: busy")
    [request] = spans.get_finished_spans()
    assert request.attributes == {
        "http.request.method": "POST",
        "http.response.status_code": 503,
        "member_export.attempts": 3,
    }
    assert request.status.description == "HTTP 503: busy"


@pytest.mark.parametrize(
    ("environ", "configured"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_spans_are_exported_only_when_an_otlp_endpoint_is_configured(environ, configured):
    assert tracing.otlp_configured(environ) is configured


def test_a_round_hands_each_event_its_context_and_a_plain_list_none():
    context = tracing.context_from(TRACEPARENT)
    assert list(round_contexts(Round(["a", "b"], [context, None]))) == [context, None]
    assert list(round_contexts(["a", "b"])) == [None, None]


# CloudEvents: the distributed-tracing extension, in binary and structured mode.


def _cloudevent(**extensions: object) -> bytes:
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "crm",
        "type": RUN_REQUESTED_CLOUDEVENT_TYPE,
        "data": {"definition": "d"},
        **extensions,
    }
    return json.dumps(event).encode()


def _decode(value: bytes, headers: list[tuple[str, bytes]]):
    return decoded_in_context(lambda: decode_record(decode_run_request, value, headers), headers)


def _binary_headers(**extra: bytes) -> list[tuple[str, bytes]]:
    headers = {
        "ce_specversion": b"1.0",
        "ce_id": b"e-1",
        "ce_source": b"crm",
        "ce_type": RUN_REQUESTED_CLOUDEVENT_TYPE.encode(),
        "content-type": b"application/json",
        **extra,
    }
    return list(headers.items())


def test_a_structured_cloudevent_s_traceparent_attribute_is_the_run_s_trace():
    request, context = _decode(_cloudevent(traceparent=TRACEPARENT, tracestate="crm=1"), [])
    assert isinstance(request, RunRequested)
    assert _ids(context) == (TRACE_ID, PARENT_SPAN_ID)


def test_a_binary_cloudevent_s_ce_traceparent_header_is_the_run_s_trace():
    request, context = _decode(b'{"definition": "d"}', _binary_headers(ce_traceparent=TRACEPARENT.encode()))
    assert isinstance(request, RunRequested)
    assert _ids(context) == (TRACE_ID, PARENT_SPAN_ID)


def test_the_record_s_traceparent_header_wins_over_the_cloudevent_s():
    headers = [("traceparent", OTHER_TRACEPARENT.encode())]
    _, context = _decode(_cloudevent(traceparent=TRACEPARENT), headers)
    assert _ids(context)[0] == OTHER_TRACEPARENT.split("-")[1]


@pytest.mark.parametrize("traceparent", ["garbage", 42, {"nested": True}, f"ff-{TRACE_ID}-{PARENT_SPAN_ID}-01"])
def test_a_cloudevent_with_a_bad_traceparent_is_still_a_run_request(traceparent):
    request, context = _decode(_cloudevent(traceparent=traceparent), [])
    assert isinstance(request, RunRequested)
    assert request.definition == "d"
    assert context is None


def test_a_plain_run_request_with_a_bad_header_is_still_a_run_request():
    value = RunRequested(definition="d").to_bytes()
    request, context = _decode(value, [("traceparent", b"\xff\x00"), ("tracestate", b"\xff")])
    assert isinstance(request, RunRequested)
    assert context is None


def test_a_record_that_is_not_an_event_reports_no_context_of_a_previous_one():
    _decode(_cloudevent(traceparent=TRACEPARENT), [])
    _, context = _decode(b"not json", [])
    assert context is None
