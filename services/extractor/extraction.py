"""Extract one run: look up its definition, page through its query, publish batches, checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog
from prometheus_client import Counter, Histogram

from shared.catalog import Catalog, NotFound
from shared.catalog.repository import Checkpoint
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.events import ExtractionCompleted, MemberBatch, RunFailed, RunRequested, RunStarted
from shared.kafka import Outgoing
from shared.querystore import MemberReader, QueryError
from shared.topics import Topics

log = structlog.get_logger(__name__)

MEMBERS_EXTRACTED = Counter("export_extractor_members_extracted_total", "Members read from the query store.")
PAGES_READ = Counter("export_extractor_pages_total", "Query pages read.")
RUNS_FAILED = Counter("export_extractor_runs_failed_total", "Runs the extractor failed, by reason.", ["reason"])
PAGE_SECONDS = Histogram("export_extractor_page_seconds", "Time to read and publish one page.")


def page_size_for(batch_size: int, configured_page_size: int) -> int:
    """A page size that is a whole number of batches, so batch identities are the same after a resume."""
    return max(1, math.ceil(configured_page_size / batch_size)) * batch_size


class Extractor:
    """Handles run requests. ``publish`` sends records and returns once the broker has them all."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        reader: MemberReader,
        topics: Topics,
        publish: Callable[[list[Outgoing]], None],
        page_size: int,
    ) -> None:
        self.catalog = catalog
        self.reader = reader
        self.topics = topics
        self.publish = publish
        self.page_size = page_size

    def _event(self, run_id: str, event: RunStarted | ExtractionCompleted | RunFailed) -> Outgoing:
        return Outgoing(self.topics.run_events, run_id, event.to_bytes())

    def handle(self, request: RunRequested) -> list[Outgoing]:
        run_id = str(request.run_id)
        try:
            definition = self.catalog.get(ExportDefinition, request.definition)
        except NotFound as exc:
            return self._fail(request, f"unknown definition: {exc}", "unknown_definition")
        checkpoint = self.catalog.claim_extraction(request.run_id, definition.name)
        if checkpoint.completed:
            log.info("run already extracted; request ignored", run_id=run_id, definition=definition.name)
            return []
        try:
            query = self.catalog.get(SavedQuery, definition.query)
            template = self.catalog.get(HttpTemplate, definition.template)
        except NotFound as exc:
            return self._fail(request, str(exc), "missing_object", checkpoint)
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
        )
        try:
            checkpoint = self._extract(request, definition, query, template, checkpoint)
        except QueryError as exc:
            return self._fail(request, str(exc), "query_error", checkpoint)
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
        self.catalog.save_checkpoint(
            Checkpoint(
                checkpoint.run_id, checkpoint.last_key, checkpoint.next_batch_index, checkpoint.members, completed=True
            )
        )
        log.info("extraction completed", run_id=run_id, members=checkpoint.members, batches=checkpoint.next_batch_index)
        return []

    def _extract(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        template: HttpTemplate,
        checkpoint: Checkpoint,
    ) -> Checkpoint:
        size = template.batch_size
        for page in self.reader.pages(query, page_size=page_size_for(size, self.page_size), after=checkpoint.last_key):
            with PAGE_SECONDS.time():
                batch_index = checkpoint.next_batch_index
                outgoing = []
                for start in range(0, len(page.members), size):
                    batch = MemberBatch(
                        run_id=request.run_id,
                        definition=definition.name,
                        template=template.name,
                        priority=definition.priority,
                        batch_index=batch_index,
                        members=page.members[start : start + size],
                    )
                    outgoing.append(Outgoing(self.topics.member_batches, batch.identity, batch.to_bytes()))
                    batch_index += 1
                self.publish(outgoing)
                checkpoint = Checkpoint(
                    checkpoint.run_id,
                    page.last_key,
                    batch_index,
                    checkpoint.members + len(page.members),
                    completed=False,
                )
                self.catalog.save_checkpoint(checkpoint)
            MEMBERS_EXTRACTED.inc(len(page.members))
            PAGES_READ.inc()
        return checkpoint

    def _fail(
        self, request: RunRequested, reason: str, label: str, checkpoint: Checkpoint | None = None
    ) -> list[Outgoing]:
        RUNS_FAILED.labels(reason=label).inc()
        log.warning("run failed", run_id=str(request.run_id), definition=request.definition, reason=reason)
        if checkpoint is not None:
            self.catalog.save_checkpoint(
                Checkpoint(
                    checkpoint.run_id,
                    checkpoint.last_key,
                    checkpoint.next_batch_index,
                    checkpoint.members,
                    completed=True,
                )
            )
        failed = RunFailed(run_id=request.run_id, definition=request.definition, reason=reason)
        return [self._event(str(request.run_id), failed)]
