"""Extract one run: look up its definition, page through its query, publish batches, checkpoint.

Pages are pipelined: page N's records are in flight to Kafka while page N+1 is read, and page N's
checkpoint is saved only once the broker has acknowledged all of its records. A crash therefore
repeats at most the pages after the last checkpoint, with the same batch identities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.extractor.ports import ExtractionStore
from shared.application.ports import DefinitionsReader, RunsReader
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import Checkpoint
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.runs import RunStatus
from shared.errors import NotFound, StoredObjectInvalid
from shared.events import ExtractionCompleted, RunFailed, RunRequested, RunStarted
from shared.kafka import InFlight, Outgoing
from shared.member_batches import BatchEncoder, MemberTooLarge
from shared.querystore import MemberReader, Page, QueryError, QueryTimeout
from shared.querystore.paging import Window
from shared.topics import Topics

log = structlog.get_logger(__name__)

MEMBERS_EXTRACTED = Counter("export_extractor_members_extracted_total", "Members read from the query store.")
PAGES_READ = Counter("export_extractor_pages_total", "Query pages read.")
RUNS_FAILED = Counter("export_extractor_runs_failed_total", "Runs the extractor failed, by reason.", ["reason"])
QUERY_SECONDS = Histogram(
    "export_extractor_query_duration_seconds",
    "Time the query store took to return one page (or a watermark).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE_RUNS = Gauge("export_extractor_active_runs", "Runs being extracted now.")

DEFAULT_MAX_RECORD_BYTES = 900_000


def page_size_for(batch_size: int, configured_page_size: int) -> int:
    """A page size that is a whole number of batches, so batch identities are the same after a resume."""
    return max(1, math.ceil(configured_page_size / batch_size)) * batch_size


class _RunCancelled(Exception):
    """The run was cancelled while it was being extracted."""


class _RunFailure(Exception):
    """Ends a run with a RunFailed event; ``label`` is the metric's reason."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.reason, self.label = reason, label


class Extractor:
    """Handles run requests.

    ``send`` hands records to the producer and returns at once; its result's ``wait()`` blocks until
    the broker has acknowledged them all.
    """

    def __init__(
        self,
        *,
        definitions: DefinitionsReader,
        runs: RunsReader,
        extraction: ExtractionStore,
        reader: MemberReader,
        topics: Topics,
        send: Callable[[list[Outgoing]], InFlight],
        page_size: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.definitions, self.runs, self.extraction = definitions, runs, extraction
        self.reader = reader
        self.topics = topics
        self.send = send
        self.page_size = page_size
        self.max_record_bytes = max_record_bytes

    def publish(self, outgoing: list[Outgoing]) -> None:
        """Send records and return once the broker has acknowledged them all."""
        self.send(outgoing).wait()

    def _event(self, run_id: str, event: RunStarted | ExtractionCompleted | RunFailed) -> Outgoing:
        return Outgoing(self.topics.run_events, run_id, event.to_bytes())

    def handle(self, request: RunRequested) -> list[Outgoing]:
        """Extract the requested run (or nothing, if it was extracted before); return its last events."""
        ACTIVE_RUNS.inc()
        checkpoint: Checkpoint | None = None
        try:
            try:
                definition = self.definitions.get(ExportDefinition, request.definition)
            except (NotFound, StoredObjectInvalid) as exc:
                raise _RunFailure(f"unknown definition: {exc}", "unknown_definition") from None
            checkpoint = self.extraction.claim_extraction(request.run_id, definition.name)
            if checkpoint.completed:
                log.info("run already extracted; request ignored", run_id=str(request.run_id))
                return []
            self._stop_if_cancelled(request)
            return self._run(request, definition, checkpoint)
        except _RunCancelled:
            log.info("run cancelled; extraction stopped", run_id=str(request.run_id))
            if checkpoint is not None:
                self.extraction.save_checkpoint(replace(checkpoint, completed=True))
            return []
        except _RunFailure as failure:
            return self._fail(request, failure, checkpoint)
        finally:
            ACTIVE_RUNS.dec()

    def _run(self, request: RunRequested, definition: ExportDefinition, checkpoint: Checkpoint) -> list[Outgoing]:
        run_id = str(request.run_id)
        try:
            query = self.definitions.get(SavedQuery, definition.query)
            template = self.definitions.get(HttpTemplate, definition.template)
        except (NotFound, StoredObjectInvalid) as exc:
            raise _RunFailure(str(exc), "missing_object") from None
        try:
            parameters = bind_values(query.parameters, request.parameters, definition.parameters)
        except ParameterError as exc:
            raise _RunFailure(f"invalid parameters: {exc}", "invalid_parameters") from None
        checkpoint = self._fix_window(definition, query, parameters, checkpoint)
        self.publish(
            [
                self._event(
                    run_id,
                    RunStarted(
                        run_id=request.run_id,
                        definition=definition.name,
                        trigger=request.trigger,
                        requested_by=request.requested_by,
                        scheduled_for=request.scheduled_for,
                    ),
                )
            ]
        )
        log.info(
            "extraction started",
            run_id=run_id,
            definition=definition.name,
            resume_after=checkpoint.last_key,
            next_batch=checkpoint.next_batch_index,
            watermark_since=checkpoint.watermark_since,
            watermark_until=checkpoint.watermark_until,
        )
        checkpoint = self._extract(request, definition, query, template, parameters, checkpoint)
        # The completion event is acknowledged before the checkpoint says "completed": a crash in
        # between redelivers the request, which finds no page after the last key and says it again.
        self.publish(
            [
                self._event(
                    run_id,
                    ExtractionCompleted(
                        run_id=request.run_id,
                        definition=definition.name,
                        members=checkpoint.members,
                        batches=checkpoint.next_batch_index,
                    ),
                )
            ]
        )
        self.extraction.save_checkpoint(replace(checkpoint, completed=True))
        log.info("extraction completed", run_id=run_id, members=checkpoint.members, batches=checkpoint.next_batch_index)
        return []

    def _fix_window(
        self, definition: ExportDefinition, query: SavedQuery, parameters: dict[str, Any], checkpoint: Checkpoint
    ) -> Checkpoint:
        """Incremental runs: fix the watermark slice once, at the run's first start (a resume reuses it)."""
        if definition.incremental is None or checkpoint.watermark_until is not None or checkpoint.members:
            return checkpoint
        column = definition.incremental.watermark_column
        since = self.extraction.watermark(definition.name)
        with QUERY_SECONDS.time():
            until = self._query(lambda: self.reader.high_watermark(query, column, since=since, parameters=parameters))
        checkpoint = replace(checkpoint, watermark_since=since, watermark_until=until)
        self.extraction.save_checkpoint(checkpoint)
        return checkpoint

    def _extract(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        template: HttpTemplate,
        parameters: dict[str, Any],
        checkpoint: Checkpoint,
    ) -> Checkpoint:
        if definition.incremental is not None and checkpoint.watermark_until is None:
            return checkpoint  # nothing moved since the last successful run
        window = (
            Window(definition.incremental.watermark_column, checkpoint.watermark_since, checkpoint.watermark_until)
            if definition.incremental
            else None
        )
        encoder = BatchEncoder(
            run_id=request.run_id,
            definition=definition.name,
            template=template.name,
            priority=definition.priority,
            batch_size=template.batch_size,
            max_record_bytes=self.max_record_bytes,
            key_column=query.key_column,
        )
        pages = self.reader.pages(
            query,
            page_size=page_size_for(template.batch_size, self.page_size),
            after=checkpoint.last_key,
            parameters=parameters,
            window=window,
        )
        batch_topic = self.topics.member_batches_for(definition.priority.value)
        in_flight: tuple[InFlight, Checkpoint] | None = None
        for page in self._timed(pages):
            try:
                batches = encoder.encode_page(page.columns, page.rows, checkpoint.next_batch_index)
            except MemberTooLarge as exc:
                raise _RunFailure(str(exc), "member_too_large") from None
            sent = self.send([Outgoing(batch_topic, f"{request.run_id}:{b.batch_index}", b.value) for b in batches])
            checkpoint = replace(
                checkpoint,
                last_key=page.last_key,
                next_batch_index=checkpoint.next_batch_index + len(batches),
                members=checkpoint.members + len(page.rows),
            )
            # Page N is in flight while page N+1 is read; N is checkpointed once acknowledged.
            if in_flight is not None:
                self._settle(*in_flight)
            in_flight = (sent, checkpoint)
            self._stop_if_cancelled(request)
            MEMBERS_EXTRACTED.inc(len(page.rows))
            PAGES_READ.inc()
        if in_flight is not None:
            self._settle(*in_flight)
        return checkpoint

    def _stop_if_cancelled(self, request: RunRequested) -> None:
        """Stop at a page boundary when the run was cancelled (one catalog read per page)."""
        record = self.runs.get_run(request.run_id)
        if record is not None and record.status is RunStatus.CANCELLED:
            raise _RunCancelled

    def _settle(self, sent: InFlight, checkpoint: Checkpoint) -> None:
        sent.wait()
        self.extraction.save_checkpoint(checkpoint)

    def _timed(self, pages: Iterator[Page]) -> Iterator[Page]:
        """The pages, each one's read time observed, query errors turned into run failures."""
        while True:
            started = time.perf_counter()
            page = self._query(lambda: next(pages, None))
            QUERY_SECONDS.observe(time.perf_counter() - started)
            if page is None:
                return
            yield page

    @staticmethod
    def _query(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except QueryTimeout as exc:
            raise _RunFailure(str(exc), "query_timeout") from None
        except QueryError as exc:
            raise _RunFailure(str(exc), "query_error") from None

    def _fail(self, request: RunRequested, failure: _RunFailure, checkpoint: Checkpoint | None) -> list[Outgoing]:
        RUNS_FAILED.labels(reason=failure.label).inc()
        log.warning("run failed", run_id=str(request.run_id), definition=request.definition, reason=failure.reason)
        if checkpoint is not None:
            self.extraction.save_checkpoint(replace(checkpoint, completed=True))
        failed = RunFailed(run_id=request.run_id, definition=request.definition, reason=failure.reason)
        return [self._event(str(request.run_id), failed)]
