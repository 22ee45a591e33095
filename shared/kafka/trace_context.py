"""Which trace a consumed record continues: its own ``traceparent`` header, else the trace context its event
carries (a CloudEvent's distributed-tracing extension), which only the decoder can read.

A decoder that finds a trace context in the event calls :func:`event_carries`; the consumer loop decodes each
record through :func:`decoded_in_context`, which hands it back with the record's context. Whatever is not a
valid W3C ``traceparent`` is ignored: the record is handled in a trace of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

from opentelemetry.context import Context

from shared.kafka.records import Headers
from shared.tracing import context_from, context_from_headers

T = TypeVar("T")

#: The trace context the event being decoded carries, reported by its decoder (None: none, or not decoding).
_carried: ContextVar[Context | None] = ContextVar("member_export_event_trace_context", default=None)


def event_carries(traceparent: object, tracestate: object = None) -> None:
    """For a decoder: the event being decoded carries this trace context (a ``traceparent``, ``str`` or ASCII
    ``bytes``, and its ``tracestate``). The consumer loop continues it unless the record's own ``traceparent``
    header names one; a malformed one is ignored."""
    found = context_from(traceparent, tracestate)
    if found is not None:
        _carried.set(found)


def decoded_in_context(decode: Callable[[], T], headers: Headers | None) -> tuple[T, Context | None]:
    """``decode()``'s result, and the trace context of the record decoded: its ``traceparent`` header's, else
    the one its decoder reported with :func:`event_carries`, else None (a new trace)."""
    token = _carried.set(None)
    try:
        decoded = decode()
        carried = _carried.get()
    finally:
        _carried.reset(token)
    return decoded, context_from_headers(headers) or carried
