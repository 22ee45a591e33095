"""Traces across the pipeline: the W3C trace context (``traceparent``) of a run, carried from its request through
Kafka record headers to every HTTP request to the partner and into the JSON logs (``trace_id``, ``span_id``),
and OpenTelemetry spans along the way, exported over OTLP only when configured.

Every process installs the OpenTelemetry SDK's tracer provider (:func:`install`, or on first use): spans get
ids, and the ids travel, whether or not anything is exported. Export is on when the standard OpenTelemetry
environment names an OTLP endpoint (:func:`otlp_configured`); the SDK reads the rest of it itself
(``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, ...).

A trace context read from outside (a record's header, a CloudEvent's attribute) that is not a valid W3C
``traceparent`` is ignored, never an error: the work starts a trace of its own instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Record headers as Kafka carries them (the same shape as :data:`shared.kafka.Headers`): a value may be None.
KafkaHeaders = Sequence[tuple[str, bytes | None]]
#: Headers of a record to produce (:data:`shared.kafka.records.ProducedHeaders`): kafka-python sends bytes only.
ProducedKafkaHeaders = Sequence[tuple[str, bytes]]
#: The ``service.name`` of a process that did not say which service it is, unless ``OTEL_SERVICE_NAME`` does.
DEFAULT_SERVICE = "member-export"
#: Longer values are not read (the W3C limits: a traceparent of a future version, 32 tracestate members).
_MAX_TRACEPARENT_CHARS = 512
_MAX_TRACESTATE_CHARS = 8192
_INSTRUMENTATION = "member_export"

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_installed = False
_exporting = False
_tracer: trace.Tracer = trace.get_tracer(_INSTRUMENTATION)


def otlp_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether spans are to be exported: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, the
    SDK is not disabled (``OTEL_SDK_DISABLED``) and ``OTEL_TRACES_EXPORTER`` (default ``otlp``) names ``otlp``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def install(service: str | None = None, environ: Mapping[str, str] = os.environ) -> None:
    """Install the SDK's tracer provider for this process, once (later calls change nothing): spans named
    ``member-export-<service>`` (``OTEL_SERVICE_NAME`` or a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``
    wins), exported over OTLP/HTTP in batches when :func:`otlp_configured`, else kept nowhere.

    A tracer provider installed before (a test's, with an in-memory exporter) is kept as it is.
    """
    global _installed, _exporting, _tracer
    # The SDK is imported here, at the first span, not with the module (exportctl's commands that publish
    # nothing start without it).
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    with _lock:
        if _installed:
            return
        _installed = True
        if isinstance(trace.get_tracer_provider(), TracerProvider):
            _tracer = trace.get_tracer(_INSTRUMENTATION)
            return
        resource = Resource.create({"service.namespace": "member-export"})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            name = f"{DEFAULT_SERVICE}-{service}" if service else DEFAULT_SERVICE
            resource = resource.merge(Resource({SERVICE_NAME: name}))
        provider = TracerProvider(resource=resource)
        if otlp_configured(environ):
            # Imported only when exporting: the exporter pulls in protobuf and requests.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _exporting = True
        trace.set_tracer_provider(provider)
        _tracer = trace.get_tracer(_INSTRUMENTATION)


def exporting() -> bool:
    """Whether this process exports its spans (the dispatcher adds a span per partner request only then)."""
    return _exporting


def tracer() -> trace.Tracer:
    """The project's tracer, the provider installed first if nobody did (:func:`install`)."""
    if not _installed:
        install()
    return _tracer


def _text(value: object, limit: int) -> str | None:
    """A header or attribute value as text: ``str``, or ASCII ``bytes``; None for anything else or too long."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > limit:
        return None
    return value


def context_from(traceparent: object, tracestate: object = None) -> Context | None:
    """The remote trace context a W3C ``traceparent`` (``str`` or ASCII ``bytes``) names, with its ``tracestate``;
    None when the traceparent is missing or malformed (a malformed tracestate is dropped). Never raises."""
    parent = _text(traceparent, _MAX_TRACEPARENT_CHARS)
    if not parent:
        return None
    carrier = {TRACEPARENT: parent}
    state = _text(tracestate, _MAX_TRACESTATE_CHARS)
    if state:
        carrier[TRACESTATE] = state
    try:
        found = _PROPAGATOR.extract(carrier, context=Context())
    except Exception:  # noqa: BLE001 - whatever a stranger's header holds, it is ignored, never fatal
        return None
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def context_from_headers(headers: KafkaHeaders | None) -> Context | None:
    """The trace context a record's ``traceparent`` and ``tracestate`` headers carry (names in any case; the
    first of each), None when there is none or it is malformed."""
    traceparent: bytes | None = None
    tracestate: bytes | None = None
    for name, value in headers or ():
        if not isinstance(name, str):
            continue
        lowered = name.lower()
        if lowered == TRACEPARENT and traceparent is None:
            traceparent = value
        elif lowered == TRACESTATE and tracestate is None:
            tracestate = value
    return None if traceparent is None else context_from(traceparent, tracestate)


def traceparent_of(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context (version 00)."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def kafka_headers(span: Span) -> list[tuple[str, bytes]]:
    """The record headers that carry ``span``'s context (``traceparent``, and ``tracestate`` when it has one);
    none for a span without a valid context."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return []
    headers = [(TRACEPARENT, traceparent_of(span_context).encode())]
    if span_context.trace_state:
        headers.append((TRACESTATE, span_context.trace_state.to_header().encode()))
    return headers


def current_kafka_headers() -> list[tuple[str, bytes]]:
    """The record headers that carry the current trace context (none outside a trace)."""
    return kafka_headers(trace.get_current_span())


def current_http_headers() -> dict[str, str]:
    """The HTTP headers that carry the current trace context to a partner (none outside a trace)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    headers = {TRACEPARENT: traceparent_of(span_context)}
    if span_context.trace_state:
        headers[TRACESTATE] = span_context.trace_state.to_header()
    return headers


def with_trace(headers: ProducedKafkaHeaders, trace_headers: ProducedKafkaHeaders) -> ProducedKafkaHeaders:
    """A record's ``headers`` with ``trace_headers`` added, unless it carries a ``traceparent`` of its own."""
    if not trace_headers:
        return headers
    if not headers:
        return trace_headers
    if any(name.lower() == TRACEPARENT for name, _ in headers):
        return headers
    return [*headers, *trace_headers]


def start_span(
    name: str,
    *,
    parent: Context | None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """Start a span under ``parent``'s trace context, or a new trace when ``parent`` is None (never under whatever
    context is current: the caller says where the work belongs). End it with ``span.end()``."""
    return tracer().start_span(
        name, context=parent if parent is not None else Context(), kind=kind, attributes=attributes
    )


def in_span(span: Span) -> Context:
    """A context in which ``span`` is the current span (to hand work over, e.g. to an asyncio task)."""
    return trace.set_span_in_context(span, Context())


@contextmanager
def attached(context: Context | None) -> Iterator[None]:
    """Run the block in ``context`` (its span current: logs carry its ids, records and requests its
    ``traceparent``); None changes nothing."""
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_context() -> Context:
    """The trace context current here (to be handed to :func:`switch_to` in another task)."""
    return otel_context.get_current()


def switch_to(context: Context) -> None:
    """Make ``context`` current in this task from now on, without restoring the one before: for a task that
    handles one piece of work after another, each in the context of whoever handed it over (the dispatcher's
    request workers)."""
    if otel_context.get_current() is not context:
        otel_context.attach(context)


@contextmanager
def publishing(name: str, attributes: Mapping[str, Any]) -> Iterator[list[tuple[str, bytes]]]:
    """A producer span around publishing records, under the current trace or else a new one; yields the record
    headers that carry it."""
    current = trace.get_current_span().get_span_context()
    parent = otel_context.get_current() if current.is_valid else None
    span = start_span(name, parent=parent, kind=SpanKind.PRODUCER, attributes=attributes)
    try:
        with attached(in_span(span)):
            yield kafka_headers(span)
    finally:
        span.end()


def new_trace(name: str, attributes: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Start a trace with a producer span named ``name`` (ended at once: it marks the request's creation) and
    return the record headers that carry it (the scheduler's run requests: one trace per run)."""
    span = start_span(name, parent=None, kind=SpanKind.PRODUCER, attributes=attributes)
    span.end()
    return kafka_headers(span)


@contextmanager
def exported_span(name: str, kind: SpanKind, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span under the current context, current in the block, when spans are exported (:func:`exporting`); a
    span that records nothing otherwise (no new ids: the current context stays as it is). For work too frequent
    to trace for nothing (a partner request)."""
    if not _exporting:
        yield trace.INVALID_SPAN
        return
    span = tracer().start_span(name, kind=kind, attributes=attributes)
    try:
        with attached(trace.set_span_in_context(span)):
            yield span
    finally:
        span.end()


def record_http_result(span: Span, status: int | None, success: bool, attempts: int, error: str | None) -> None:
    """Tell a partner request's span how it ended: the last status, the attempts, and the error when it failed."""
    if not span.is_recording():
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("member_export.attempts", attempts)
    if not success:
        span.set_status(Status(StatusCode.ERROR, (error or "delivery failed")[:200]))


def annotate(context: Context | None, attributes: Mapping[str, Any]) -> None:
    """Add ``attributes`` to the span current in ``context`` (a record's span, once its event is known)."""
    if context is not None:
        span = trace.get_current_span(context)
        if span.is_recording():
            span.set_attributes(attributes)
