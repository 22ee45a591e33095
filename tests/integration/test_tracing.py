"""Trace context through the consumer loop on a real broker and through the dispatcher to a real HTTP server:
a record's trace is continued by its handling, its outcome and its dead letter; a bad header is never fatal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from shared import tracing
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import MemberBatch, RunRequested
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.kafka.records import Round
from shared.settings import CommonSettings
from shared.topics import Topics
from tests.dispatcher_helpers import Http, blocking_dispatcher, dispatch_catalog, http_on_loop
from tests.kafka_helpers import produce_with_headers, read_records_to_end
from tests.tracing_helpers import (
    PARENT_SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    OtlpCollector,
    collected_spans,
    header,
    trace_id_of,
)

pytestmark = pytest.mark.integration


def _loop(settings: CommonSettings, handler=None, handle_round=None) -> ConsumerLoop[RunRequested]:
    topics = settings.topics
    return ConsumerLoop(
        service="tracing-test",
        consumer=make_consumer(settings, settings.topic_prefix + "tracing", [topics.run_requests]),
        producer=make_producer(settings, "tracing-test"),
        decode=value_decoder(RunRequested.model_validate_json),
        handler=handler,
        handle_round=handle_round,
        dead_letter_topic=topics.dead_letters,
        dead_letter_backoff_seconds=0.05,
    )


def _run_until(loop: ConsumerLoop[RunRequested], condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the loop did not get there in time"
        loop.poll_once()


def _requests(settings: CommonSettings, *records: tuple[str, list[tuple[str, bytes]]]) -> None:
    """Run requests for the given definitions, with the given headers, on the run-requests topic."""
    produce_with_headers(
        settings.kafka_bootstrap_servers,
        settings.topics.run_requests,
        [(definition, RunRequested(definition=definition).to_bytes(), headers) for definition, headers in records],
    )


@pytest.mark.parametrize("rounds", [False, True])
def test_a_record_s_trace_is_continued_by_its_handling_and_its_outcome(settings: CommonSettings, rounds: bool):
    ensure_topics(settings)
    topics = settings.topics
    seen: dict[str, str | None] = {}  # definition -> the trace id its handling ran in

    def handler(request: RunRequested) -> list[Outgoing]:
        seen[request.definition] = trace_id_of(tracing.current_http_headers().get("traceparent"))
        return [Outgoing(topics.run_events, request.definition, b"{}")]

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        assert isinstance(events, Round)
        results: list[list[Outgoing] | BaseException] = []
        for event, context in zip(events, events.contexts, strict=True):
            with tracing.attached(context):
                results.append(handler(event))
        return results

    loop = _loop(settings, None if rounds else handler, handle_round if rounds else None)
    with collected_spans() as spans:
        _requests(
            settings,
            ("traced", [("traceparent", TRACEPARENT.encode())]),
            ("bad-header", [("traceparent", b"\xff-not-a-trace"), ("tracestate", b"\x00")]),
            ("untraced", []),
        )
        try:
            _run_until(loop, lambda: len(seen) == 3)
        finally:
            loop.consumer.close()
            loop.producer.close()
        finished = [s for s in spans.get_finished_spans() if s.name == f"process {topics.run_requests}"]

    assert seen["traced"] == TRACE_ID
    assert seen["bad-header"] is not None, "a record with a bad traceparent starts a trace"
    assert seen["untraced"] is not None, "a record without a traceparent starts a trace"
    assert len({seen["traced"], seen["bad-header"], seen["untraced"]}) == 3
    outcomes = {r.key.decode(): r for r in read_records_to_end(settings.kafka_bootstrap_servers, topics.run_events)}
    for definition, trace_id in seen.items():
        assert trace_id_of(header(outcomes[definition].headers, "traceparent")) == trace_id
    [traced] = [s for s in finished if f"{s.context.trace_id:032x}" == TRACE_ID]
    assert traced.kind is SpanKind.CONSUMER
    assert traced.parent is not None
    assert f"{traced.parent.span_id:016x}" == PARENT_SPAN_ID
    assert traced.attributes is not None
    assert traced.attributes["messaging.destination.name"] == topics.run_requests
    assert {f"{s.context.trace_id:032x}" for s in finished} == set(seen.values())


def test_a_dead_letter_continues_the_trace_of_the_record_it_stands_for(settings: CommonSettings):
    ensure_topics(settings)
    topics = settings.topics

    def handler(request: RunRequested) -> list[Outgoing]:
        raise ValueError("refused")

    loop = _loop(settings, handler)
    produce_with_headers(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("garbage", b"not an event", [("traceparent", TRACEPARENT.encode())])],
    )
    _requests(settings, ("refused", [("traceparent", TRACEPARENT.encode())]))
    with collected_spans() as spans:
        try:
            _run_until(
                loop, lambda: len(read_records_to_end(settings.kafka_bootstrap_servers, topics.dead_letters)) == 2
            )
        finally:
            loop.consumer.close()
            loop.producer.close()
        finished = spans.get_finished_spans()

    letters = read_records_to_end(settings.kafka_bootstrap_servers, topics.dead_letters)
    assert {trace_id_of(header(letter.headers, "traceparent")) for letter in letters} == {TRACE_ID}
    assert [s.status.status_code for s in finished if s.name == f"process {topics.run_requests}"] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
    ]


# The dispatcher: each batch handled in its record's context; every partner request carries it.


@pytest.fixture
def catalog(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    with dispatch_catalog(migrated_catalog, tmp_path) as catalog:
        yield catalog


@pytest.fixture
def client() -> Iterator[Http]:
    with http_on_loop() as http:
        yield http


def _batch(index: int, members: int = 4) -> MemberBatch:
    return MemberBatch(
        run_id=uuid.uuid4(),
        definition="d",
        template="t",
        batch_index=index,
        members=[{"id": i} for i in range(members)],
    )


def test_every_partner_request_carries_its_batch_s_trace_and_a_template_may_not_set_it(
    catalog: CatalogStores, client: Http, monkeypatch: pytest.MonkeyPatch
):
    for name in ("traceparent", "TraceState"):
        with pytest.raises(ValidationError, match="is set by the dispatcher"):
            HttpTemplate(name="t", query="q", profile="p", path="/members", headers={name: "x"})
    with HttpReceiver(reject_members=frozenset({2})) as receiver:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members", batch_size=2))
        dispatcher = blocking_dispatcher(catalog, client, RetryBudget(max_attempts=1), Topics("x."))
        monkeypatch.setattr(tracing, "_exporting", True)  # a span per request, as when exported
        with collected_spans() as spans:
            record_spans = [
                tracing.start_span("process member-batches", parent=tracing.context_from(TRACEPARENT)),
                tracing.start_span("process member-batches", parent=None),
            ]
            batches = [_batch(0), _batch(1)]
            dispatcher.handle_all(Round(batches, [tracing.in_span(span) for span in record_spans]))
            for span in record_spans:
                span.end()
            finished = spans.get_finished_spans()

    traces = [f"{span.get_span_context().trace_id:032x}" for span in record_spans]
    for sent, trace_id in zip(batches, traces, strict=True):
        receipts = [r for r in receiver.receipts() if r.headers["Idempotency-Key"].startswith(f"{sent.run_id}:")]
        assert len(receipts) >= 2  # two requests of two members, the refused one split further
        assert {trace_id_of(r.headers["traceparent"]) for r in receipts} == {trace_id}
    requests = [s for s in finished if s.kind is SpanKind.CLIENT]
    # Each request's traceparent names its own span, child of the batch's record span.
    assert {r.headers["traceparent"] for r in receiver.receipts()} == {
        tracing.traceparent_of(s.context) for s in requests
    }
    record_span_ids = {span.get_span_context().span_id for span in record_spans}
    assert {s.parent.span_id for s in requests if s.parent is not None} == record_span_ids
    assert {s.attributes["http.response.status_code"] for s in requests if s.attributes} == {200, 400}


# Export: over OTLP/HTTP only when an endpoint is configured.

_PROBE = (
    "from shared import tracing\n"
    "tracing.install('probe')\n"
    "tracing.new_trace('send run-requests', {'member_export.run_id': 'r-1'})\n"
)


def _probe(env: dict[str, str]) -> None:
    """A process that starts one trace and exits (the SDK flushes its spans at exit)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, check=True, timeout=60)


def test_spans_are_exported_over_otlp_only_when_an_endpoint_is_configured():
    with OtlpCollector() as collector:
        _probe({})
        assert collector.received == [], "no endpoint: nothing exported"
        _probe({"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
        [(path, body)] = collector.received

    assert path == "/v1/traces"
    exported = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = exported.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "member-export-probe"
    [span] = [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert span.name == "send run-requests"
    assert {a.key: a.value.string_value for a in span.attributes} == {"member_export.run_id": "r-1"}
