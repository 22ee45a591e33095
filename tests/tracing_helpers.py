"""Spans collected in memory, and trace ids read back from the places they travel (tests of the tracing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devtools.processes import serving_thread
from shared import tracing

#: A W3C traceparent as another system would send it (sampled).
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@contextmanager
def collected_spans() -> Iterator[InMemorySpanExporter]:
    """The spans this process ends while in the block, with the SDK's in-memory exporter (added to the project's
    tracer provider; shut down after the block, so that later spans are not kept)."""
    tracing.install()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "the project installs the SDK's tracer provider"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        exporter.shutdown()


def trace_id_of(traceparent: str | bytes | None) -> str | None:
    """The trace id a ``traceparent`` names (None without one)."""
    if traceparent is None:
        return None
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return text.split("-")[1]


def header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The first value of a record header."""
    return next((value for key, value in headers or [] if key == name), None)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a service's output (other lines skipped)."""
    lines = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


class OtlpCollector:
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps each request's path and raw body (protobuf: the project's
    ``devtools.http_receiver`` reads bodies as JSON text)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                collector.received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = serving_thread(self._server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpCollector:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
