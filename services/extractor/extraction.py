"""Extract one run: look up its definition, page through its query, publish batches, checkpoint.

Pages are pipelined: page N's records are in flight to Kafka while page N+1 is read, and page N's
checkpoint is saved only once the broker has acknowledged all of its records (a run's last page: with its
completion, once ``extraction.completed`` is acknowledged). Page N+1 is sent after that save, which also records
page N+1's batches (:class:`~shared.domain.checkpoints.SendingPage`): a crash repeats at most that one page, re-read
exactly, its members in the batches they were sent in, with the same batch identities.

A run's start costs the catalog two transactions: its definition, query and template in one read, and its
claim (checkpoint, sync fixed at the first start, status, pending retries) in one transaction; a run published
ahead of its instant is judged between a claim that leaves its sync alone and one that fixes it. A cancel is
looked for before each page but the first (the claim read the status before the first). The runs a round is given
may be started together before (:mod:`services.extractor.bulk_starts`: one claim for them all, their ``run.started``
acknowledged as it commits): a run's claim then finds its sync announced, and its ``run.started`` is not said again.

A large run is split into key ranges that several replicas extract at once (see
:mod:`services.extractor.ranges`): the replica that takes the run request plans the ranges and publishes
a :class:`RangeRequested` for each; whichever replica takes one extracts that range, with a checkpoint
of its own, and the one that extracts the last range says the run's extraction is complete, with the
members and batches of all ranges.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.extractor.bulk_starts import BulkStarts, started_event
from services.extractor.change_extraction import ChangeRun, ChangeSnapshots
from services.extractor.page_bounds import batch_ends, regroup
from services.extractor.ports import ExtractionStore, ExtractorDefinitions, ExtractorRuns
from services.extractor.ranges import (
    BATCH_INDEX_LIMIT,
    boundary_ranks,
    index_spaces,
    placed_keys,
    range_count,
)
from services.extractor.retry_members import Retried, RetryJob, RetryScope, RetryStore, send_retries
from services.extractor.run_sync import DEFAULT_RECORD_MEMBERS as DEFAULT_RECORD_MEMBERS
from services.extractor.run_sync import fixed_sync, record_size, run_sync, template_name, watermark_column
from services.extractor.scheduled_runs import StartTimes, overlap_skip, published_ahead, withdrawal, withdrawn
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, RunObjects, SavedQuery
from shared.domain.checkpoints import Checkpoint, RangeCheckpoint, RangeState, RunClaim, SendingPage
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.runs import RunStatus
from shared.domain.schedule import Overlap
from shared.domain.sync_mode import SyncMode
from shared.errors import NotFound, StoredObjectInvalid
from shared.events import (
    ChangeCounts,
    ExtractionCompleted,
    RangeRequested,
    RunFailed,
    RunRequested,
    RunStarted,
    bounded_reason,
)
from shared.kafka import InFlight, Outgoing
from shared.member_batches import BatchEncoder, EncodedBatch, MemberTooLarge
from shared.member_keys import row_key
from shared.metrics import UNKNOWN_DEFINITION
from shared.outages import DependencyUnavailable
from shared.querystore import JsonPage, MemberPages, MemberReader, Page, QueryError, QueryTimeout, StoreUnavailable
from shared.querystore.paging import Window
from shared.topics import Topics

log = structlog.get_logger(__name__)

MEMBERS_EXTRACTED = Counter(
    "member_export_extractor_members_total", "Members read from the query store, by definition.", ["definition"]
)
PAGES_READ = Counter("member_export_extractor_pages_total", "Query pages read.")
ROW_PAGES = Counter(
    "member_export_extractor_row_pages_total",
    "Pages encoded from driver rows although the database writes the query's JSON (a value it cannot write exactly).",
)
RUNS_FAILED = Counter(
    "member_export_extractor_runs_failed_total",
    "Runs the extractor failed, by definition and reason.",
    ["definition", "reason"],
)
RUNS_SPLIT = Counter("member_export_extractor_runs_split_total", "Runs split into key ranges for several replicas.")
QUERY_SECONDS = Histogram(
    "member_export_extractor_query_duration_seconds",
    "Time the query store took to return one page (or a watermark); with PostgreSQL pages read at once "
    "(EXPORT_EXTRACTOR_PAGES_IN_FLIGHT), the extractor's wait for the next page.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE_RUNS = Gauge("member_export_extractor_runs_active", "Runs (or key ranges of split runs) being extracted now.")

DEFAULT_MAX_RECORD_BYTES = 900_000
DEFAULT_MAX_START_WAIT_SECONDS = 60.0
#: A run that met an unreachable member store and was not handed back here for this long past its store wait is taken
#: to be another replica's (a partition moved): its outage is forgotten.
FORGET_OUTAGES_AFTER_SECONDS = 300.0


def page_size_for(batch_size: int, configured_page_size: int) -> int:
    """A page size that is a whole number of batches, so batch identities are the same after a resume."""
    return max(1, math.ceil(configured_page_size / batch_size)) * batch_size


#: A run's saved query, HTTP template and bound parameters.
_Bound = tuple[SavedQuery, HttpTemplate, dict[str, Any]]


@dataclass(frozen=True)
class _Read:
    """A page as read (``pages``: its reader; None for a resume's page re-read, or read empty), and the batch index
    the pages after it start from at least (a resume's page re-read: its batches' end as recorded before the crash)."""

    pages: MemberPages | None
    page: Page | JsonPage
    next_batch_index: int = 0
    #: A resume's page re-read in its recorded batches (None: encode the page), and what is written ahead of it.
    batches: list[EncodedBatch] | None = None
    sending: SendingPage | None = None


class _RunCancelled(Exception):
    """The run was cancelled (or, for a key range, failed elsewhere) while it was being extracted."""


class _RunFailure(Exception):
    """Ends a run with a RunFailed event; ``label`` is the metric's reason."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.reason, self.label = reason, label


@dataclass(frozen=True)
class _Progress:
    """Where a run (or one of its ranges) stands: resume after ``last_key`` with batch ``next_batch_index``."""

    last_key: Any
    next_batch_index: int
    members: int
    #: The page sent beyond ``last_key`` (None: none): written ahead of that page's records.
    sending: SendingPage | None = None


@dataclass(frozen=True)
class _Job:
    """What to extract: the pages' bounds and batch indexes, where to save progress, when to stop."""

    run_id: uuid.UUID
    definition: ExportDefinition
    query: SavedQuery
    template: HttpTemplate
    parameters: dict[str, Any]
    window: Window | None
    start: _Progress
    save: Callable[[_Progress], None]
    #: Members per record (as fixed at the run's first start: :func:`~services.extractor.run_sync.record_size`).
    record_size: int
    until: Any = None  # a range's last key (None: the query's last)
    end_batch_index: int = BATCH_INDEX_LIMIT
    stop_on: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED})
    what: str = "run"
    #: Whether the last page's progress is saved too (False: the caller saves it, with the run's completion).
    save_last: bool = True


class Extractor:
    """Handles run requests, and requests for key ranges of split runs.

    ``send`` hands records to the producer and returns at once; its result's ``wait()`` blocks until
    the broker has acknowledged them all. ``range_members`` > 0 splits runs of at least twice as many
    members into ranges (``run_request_partitions()``: the run-requests topic's partitions, at most one
    range each) when ``other_replicas()`` says there are replicas to share them with; 0 never splits.
    """

    def __init__(
        self,
        *,
        definitions: ExtractorDefinitions,
        runs: ExtractorRuns,
        extraction: ExtractionStore,
        reader: MemberReader,
        topics: Topics,
        send: Callable[[list[Outgoing]], InFlight],
        page_size: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        record_members: int = DEFAULT_RECORD_MEMBERS,
        database_json: bool = True,
        range_members: int = 0,
        run_request_partitions: Callable[[], int] = lambda: 1,
        other_replicas: Callable[[], bool] = lambda: True,
        store_retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        snapshots: ChangeSnapshots | None = None,
        retries: RetryStore | None = None,
        start_times: StartTimes | None = None,
    ) -> None:
        self.definitions, self.runs, self.extraction = definitions, runs, extraction
        self.reader = reader
        self.topics = topics
        self.send = send
        self.page_size = page_size
        self.max_record_bytes = max_record_bytes
        self.record_members = record_members
        #: Members' JSON written by the database where it can be (EXPORT_EXTRACTOR_DATABASE_JSON).
        self.database_json = database_json
        #: Members a key range should have at least (EXPORT_EXTRACTOR_RANGE_MEMBERS); 0: runs are not split.
        self.range_members = range_members
        self.run_request_partitions = run_request_partitions
        #: Whether other replicas hold partitions of the run-requests topic: alone, a replica splits nothing
        #: (ranges would cost a pass over the keys and a round trip through Kafka each, for no gain).
        self.other_replicas = other_replicas
        #: How long a run waits for an unreachable member store (EXPORT_EXTRACTOR_STORE_RETRY_SECONDS).
        self.store_retry_seconds = store_retry_seconds
        self.clock = clock
        #: Change-mode definitions' snapshots (shared/catalog/change_snapshots.py); None: change mode fails runs.
        self.snapshots = snapshots
        #: Members refused by earlier runs, sent again (None: not at all; see services.extractor.retry_members).
        self.retries = retries
        #: When scheduled runs may start, and their start delay (see services.extractor.scheduled_runs).
        self.start_times = start_times or StartTimes(max_wait=timedelta(seconds=DEFAULT_MAX_START_WAIT_SECONDS))
        #: Since when each run has met an unreachable member store without a page read since, and when it last met
        #: it here (a run another replica took over is forgotten: see :meth:`_forget_runs_gone_elsewhere`).
        self._store_down_since: dict[uuid.UUID, tuple[float, float]] = {}
        #: A round's due run requests started together ahead of their extraction (see bulk_starts).
        self.starts = BulkStarts(
            definitions=definitions,
            runs=runs,
            extraction=extraction,
            topics=topics,
            send=lambda outgoing: self.send(outgoing),  # looked up at each call: tests replace it
            start_times=self.start_times,
            record_members=record_members,
        )

    def publish(self, outgoing: list[Outgoing]) -> None:
        """Send records and return once the broker has acknowledged them all."""
        self.send(outgoing).wait()

    def _event(self, run_id: str, event: RunStarted | ExtractionCompleted | RunFailed) -> Outgoing:
        return Outgoing(self.topics.run_events, run_id, event.to_bytes())

    def handle(self, request: RunRequested | RangeRequested) -> list[Outgoing]:
        """Extract the requested run or range (or nothing, if it was done before); return the records to publish
        after it (its last events, or the range requests of a run it split).

        An unreachable member store is waited out: :class:`DependencyUnavailable` hands the request back to
        the consumer loop, which handles it again later, resuming from the checkpoint of the last page
        acknowledged; after ``store_retry_seconds`` without a page read, the run fails with the reason.
        """
        if self._store_down_since:
            self._forget_runs_gone_elsewhere()
        try:
            outgoing = self._handle(request)
        except StoreUnavailable as exc:
            return self._store_unavailable(request, exc)
        self._store_down_since.pop(request.run_id, None)
        return outgoing

    def _forget_runs_gone_elsewhere(self) -> None:
        """Forget the outages of runs not handed back here for longer than a run waits for the store and then some
        (a handed-back request comes back within a backoff of 30 s at most): another replica took them over, and
        should one come back here after another rebalance, its wait starts over rather than failing it at once."""
        stale = self.clock() - self.store_retry_seconds - FORGET_OUTAGES_AFTER_SECONDS
        for run_id in [run_id for run_id, (_, seen) in self._store_down_since.items() if seen < stale]:
            del self._store_down_since[run_id]

    def _store_unavailable(self, request: RunRequested | RangeRequested, error: StoreUnavailable) -> list[Outgoing]:
        now = self.clock()
        since = self._store_down_since.get(request.run_id, (now, now))[0]
        self._store_down_since[request.run_id] = (since, now)
        waited = now - since
        if waited < self.store_retry_seconds:
            log.warning("member store unreachable; the run waits", run_id=str(request.run_id), error=str(error))
            raise DependencyUnavailable(f"{error}: the run resumes from its last checkpoint") from error
        self._store_down_since.pop(request.run_id, None)
        failure = _RunFailure(f"{error} for {waited:.0f} s: the run gave up", "store_unreachable")
        if isinstance(request, RangeRequested):
            stored = self.extraction.range_checkpoint(request.run_id, request.range_index)
            if stored is not None:
                self.extraction.finish_range(stored, RangeState.STOPPED)
        checkpoint = self.extraction.claim_extraction(request.run_id, request.definition)
        return self._fail(request.run_id, request.definition, failure, checkpoint)

    def _handle(self, request: RunRequested | RangeRequested) -> list[Outgoing]:
        if isinstance(request, RangeRequested):
            return self.handle_range(request)
        ACTIVE_RUNS.inc()
        checkpoint: Checkpoint | None = None
        try:
            objects = self._definition(request)
            definition = objects.definition if objects is not None else None
            name = definition.name if definition is not None else request.definition
            bound: _Bound | _RunFailure = _RunFailure("no definition", "unknown_definition")
            if objects is not None:
                try:
                    bound = self._bound(objects, request.parameters)
                except _RunFailure as failure:  # said once the run is known to run (not cancelled, not withdrawn)
                    bound = failure
            # A run published ahead is judged before its sync is fixed: its first start is told by a sync not fixed.
            fix_now = definition is not None and not published_ahead(request)
            claim = self._claim(request, name, definition if fix_now else None, bound)
            checkpoint = claim.checkpoint
            if checkpoint.completed:
                if checkpoint.withheld_for is not None:  # kept from starting: the scheduler records it skipped
                    log.info(
                        "run withheld by the scheduler's overlap policy (skip): another run of its definition was "
                        "active; request ignored",
                        run_id=str(request.run_id),
                        active_run=str(checkpoint.withheld_for),
                    )
                else:
                    log.info("run already extracted; request ignored", run_id=str(request.run_id))
                return []
            if claim.status is RunStatus.CANCELLED:
                raise _RunCancelled
            if claim.first_start:  # a resume has its sync fixed
                not_started = self._judge_scheduled(request, definition, checkpoint)
                if not_started is not None:
                    return not_started
                self.start_times.observe_start(request)
            if definition is None:
                raise _RunFailure(f"unknown definition: {request.definition}", "unknown_definition")
            if checkpoint.sync is None:  # published ahead and judged: started, its sync fixed now
                claim = self._claim(request, name, definition, bound)
                checkpoint = claim.checkpoint
                if checkpoint.completed:  # done meanwhile (a redelivery to another replica)
                    return []
                if claim.status is RunStatus.CANCELLED:
                    raise _RunCancelled
            if isinstance(bound, _RunFailure):
                raise bound
            return self._run(request, definition, bound, claim)
        except _RunCancelled:
            log.info("run cancelled; extraction stopped", run_id=str(request.run_id))
            if checkpoint is not None:
                self.extraction.save_checkpoint(replace(checkpoint, completed=True))
            return []
        except _RunFailure as failure:
            return self._fail(request.run_id, request.definition, failure, checkpoint)
        finally:
            ACTIVE_RUNS.dec()
            self.starts.handled(request.run_id)

    def _claim(
        self, request: RunRequested, name: str, definition: ExportDefinition | None, bound: _Bound | _RunFailure
    ) -> RunClaim:
        """The run's claim (one catalog transaction): its checkpoint and status; with ``definition``, its sync fixed
        at the first start and, unless it runs in change mode, the pending retries it takes (none for a run about
        to fail: its objects are missing, or its parameters invalid)."""
        retries = self.retries is not None and not isinstance(bound, _RunFailure)
        size = record_size(bound[1], self.record_members) if not isinstance(bound, _RunFailure) else None
        return self.extraction.claim_run(
            request.run_id,
            name,
            fix_sync=partial(fixed_sync, definition, record_size=size) if definition is not None else None,
            # Fixed at the run's first start: a resume takes the same.
            take_retries=(lambda c: run_sync(c).mode is not SyncMode.CHANGES) if retries else None,
        )

    def _record_size(self, template: HttpTemplate, checkpoint: Checkpoint) -> int:
        """Members per record of the run: as fixed at its first start (a ``batch_size`` edited since changes
        nothing), else as its template gives now."""
        return record_size(template, self.record_members, checkpoint) or 1

    def _definition(self, request: RunRequested) -> RunObjects | None:
        """The run's definition, query and template (one catalog read). For a scheduled run published ahead: the
        definition it was published for, by id when the request names it (renamed since or not), and None when
        it is gone (the run is withdrawn at its start)."""
        ahead = published_ahead(request)
        try:
            if ahead and request.definition_id is not None:
                return self.definitions.run_objects(definition_id=request.definition_id)
            return self.definitions.run_objects(name=request.definition)
        except NotFound as exc:
            if ahead:
                return None
            raise _RunFailure(f"unknown definition: {exc}", "unknown_definition") from None
        except StoredObjectInvalid as exc:
            raise _RunFailure(f"unknown definition: {exc}", "unknown_definition") from None

    def _judge_scheduled(
        self, request: RunRequested, definition: ExportDefinition | None, checkpoint: Checkpoint
    ) -> list[Outgoing] | None:
        """For a run published ahead of its instant, at its first start: what to publish instead of starting it
        (nothing when withdrawn, its skipped record on overlap), or None to start it. See scheduled_runs."""
        if not published_ahead(request):
            return None
        reason = withdrawal(request, definition)
        if reason is not None:
            withdrawn(request, reason)
        else:
            assert definition is not None
            skips = definition.schedule.overlap is Overlap.SKIP
            active = self.runs.active_runs([definition.name]).get(definition.name) if skips else None
            skipped = overlap_skip(request, definition, active)
            if skipped is None:
                return None
            # Acknowledged before the run is marked done: a crash in between publishes it again on redelivery
            # (the run record folds it again to the same skipped run), never loses it.
            self.publish([Outgoing(self.topics.run_events, str(request.run_id), skipped.to_bytes())])
        self.extraction.save_checkpoint(replace(checkpoint, completed=True))  # a redelivery starts nothing
        return []

    def _objects(
        self, definition: ExportDefinition, requested: dict[str, Any], checkpoint: Checkpoint
    ) -> tuple[SavedQuery, HttpTemplate, dict[str, Any]]:
        """The run's query, its template as fixed at its first start (:func:`template_name`) and its parameters."""
        try:
            query = self.definitions.get(SavedQuery, definition.query)
            template = self.definitions.get(HttpTemplate, template_name(definition, checkpoint))
        except (NotFound, StoredObjectInvalid) as exc:
            raise _RunFailure(str(exc), "missing_object") from None
        return self._bound(RunObjects(definition, query, template), requested)

    @staticmethod
    def _bound(objects: RunObjects, requested: dict[str, Any]) -> _Bound:
        """The run's query, template and parameters bound; the run's failure when an object is missing or a
        parameter invalid."""
        if objects.missing is not None or objects.query is None or objects.template is None:
            raise _RunFailure(objects.missing or "missing object", "missing_object")
        try:
            parameters = bind_values(objects.query.parameters, requested, objects.definition.parameters)
        except ParameterError as exc:
            raise _RunFailure(f"invalid parameters: {exc}", "invalid_parameters") from None
        return objects.query, objects.template, parameters

    def _run(
        self, request: RunRequested, definition: ExportDefinition, bound: _Bound, claim: RunClaim
    ) -> list[Outgoing]:
        query, template, parameters = bound
        # The claim fixed the run's sync (a resume keeps it) and took its retries (a resume takes the same).
        checkpoint = self._fix_window(definition, query, parameters, claim.checkpoint)
        if template_name(definition, checkpoint) != template.name:  # the definition switched template since
            query, template, parameters = self._objects(definition, request.parameters, checkpoint)
        # Acknowledged with the run's first records (waiting for them sends it too) and at the latest before its
        # completion, range requests or failure are published: a wait of its own would cost a broker round trip.
        # A run started in bulk (its sync announced) had its run.started acknowledged then: none again.
        announced = checkpoint.sync is not None and checkpoint.sync.announced
        started = (
            InFlight([], timeout_seconds=0.0)
            if announced
            else self.send([started_event(request, definition.name, self.topics.run_events)])
        )
        try:
            return self._started(request, definition, query, template, parameters, checkpoint, started, claim.retries)
        finally:
            started.wait()  # also when the run failed or stopped: its outcome is published after this

    def _started(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        template: HttpTemplate,
        parameters: dict[str, Any],
        checkpoint: Checkpoint,
        started: InFlight,
        retries: int | None,
    ) -> list[Outgoing]:
        """The run once its ``run.started`` is sent (``started``, waited for before the run's outcome is);
        ``retries``: how many pending retries its claim took (None: none claimed)."""
        run_id = str(request.run_id)
        changes_mode = run_sync(checkpoint).mode is SyncMode.CHANGES
        log.info(
            "extraction started",
            run_id=run_id,
            definition=definition.name,
            resume_after=checkpoint.last_key,
            next_batch=checkpoint.next_batch_index,
            watermark_since=checkpoint.watermark_since,
            watermark_until=checkpoint.watermark_until,
        )
        if changes_mode:  # never split, no watermark: see change_extraction.py
            checkpoint, changes = self._changes(request, definition, query, parameters, checkpoint)
            started.wait()
            self._complete(
                request.run_id,
                definition.name,
                checkpoint,
                checkpoint.members,
                checkpoint.next_batch_index,
                changes,
                parameters=request.parameters,
                retry_index=None,
            )
            return []
        window = self._window(definition, checkpoint)
        # An incremental run (as it started) with no window: nothing moved since the last run.
        if not (watermark_column(definition, checkpoint) is not None and window is None):
            plan = self._split(request, definition, query, template, parameters, window, checkpoint)
            if plan is not None:
                started.wait()
                return self._range_requests(request, definition, plan, checkpoint)
            checkpoint = self._extract_run(request, definition, query, template, parameters, window, checkpoint)
        started.wait()
        self._complete(
            request.run_id,
            definition.name,
            checkpoint,
            checkpoint.members,
            checkpoint.next_batch_index,
            parameters=request.parameters,
            retry_index=checkpoint.next_batch_index,
            retries=retries,
        )
        return []

    def _changes(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        parameters: dict[str, Any],
        checkpoint: Checkpoint,
    ) -> tuple[Checkpoint, ChangeCounts]:
        if self.snapshots is None:
            raise _RunFailure("change mode needs the snapshot store (not given to this extractor)", "invalid_sync")
        run = ChangeRun(
            self,
            self.snapshots,
            run_id=request.run_id,
            definition=definition,
            query=query,
            parameters=parameters,
            save=self.extraction.save_checkpoint,
            fail=_RunFailure,
            allow_mass_removal=request.allow_mass_removal,
            requested_parameters=request.parameters,
        )
        return run.extract(checkpoint)

    def _complete(
        self,
        run_id: uuid.UUID,
        definition: str,
        checkpoint: Checkpoint,
        members: int,
        batches: int,
        changes: ChangeCounts | None = None,
        *,
        parameters: dict[str, Any],
        retry_index: int | None,
        retries: int | None = None,
    ) -> None:
        # The completion event is acknowledged before the checkpoint says "completed" (with the last page's
        # progress: a run's last page is not checkpointed on its own): a crash in between redelivers the
        # request, which repeats the pages after the checkpoint saved before (the same batch identities) and
        # says it again (after the same retry batches, with the same indexes from ``retry_index``). ``retries``:
        # how many the run's claim took (None: read from the store). Change-mode runs
        # (``retry_index`` None) send no retries of their own: a refused member's snapshot did not move,
        # so it is a change again.
        retried = (
            Retried()
            if retry_index is None
            else self._send_retries(run_id, definition, checkpoint, parameters, retry_index, retries)
        )
        completed = ExtractionCompleted(
            run_id=run_id,
            definition=definition,
            members=members + retried.members,
            batches=batches + retried.batches,
            changes=changes,
            retries=retried.retries,
        )
        self.publish([self._event(str(run_id), completed)])
        self.extraction.save_checkpoint(replace(checkpoint, members=members, completed=True))
        log.info("extraction completed", run_id=str(run_id), members=members, batches=batches)

    def _send_retries(
        self,
        run_id: uuid.UUID,
        name: str,
        checkpoint: Checkpoint,
        parameters: dict[str, Any],
        first_index: int,
        claimed: int | None,
    ) -> Retried:
        """Publish the run's retries its pages did not carry (services.extractor.retry_members)."""
        store = self.retries
        if store is None:
            return Retried()
        if claimed is None:  # only read: the claim was recorded at the run's start
            claimed = store.claimed(run_id)
        if not claimed:
            return Retried()
        try:
            definition = self.definitions.get(ExportDefinition, name)
        except (NotFound, StoredObjectInvalid) as exc:
            raise _RunFailure(f"unknown definition: {exc}", "unknown_definition") from None
        query, template, bound = self._objects(definition, parameters, checkpoint)
        window = self._window(definition, checkpoint)
        job = RetryJob(
            run_id,
            definition,
            query,
            template,
            bound,
            RetryScope(full=run_sync(checkpoint).full_scope, window=window),
            first_index,
            self._record_size(template, checkpoint),
            self.max_record_bytes,
        )
        try:
            retried: Retried = self._query(
                lambda: send_retries(job, reader=self.reader, store=store, topics=self.topics, publish=self.publish)
            )
            return retried
        except MemberTooLarge as exc:
            raise _RunFailure(str(exc), "member_too_large") from None

    def _fix_window(
        self, definition: ExportDefinition, query: SavedQuery, parameters: dict[str, Any], checkpoint: Checkpoint
    ) -> Checkpoint:
        """Incremental runs: fix the watermark slice once, at the run's first start (a resume reuses it)."""
        column = watermark_column(definition, checkpoint)
        if column is None or checkpoint.watermark_until is not None or checkpoint.members:
            return checkpoint
        since = self.extraction.watermark(definition.name)
        with QUERY_SECONDS.time():
            until = self._query(lambda: self.reader.high_watermark(query, column, since=since, parameters=parameters))
        checkpoint = replace(checkpoint, watermark_since=since, watermark_until=until)
        self.extraction.save_checkpoint(checkpoint)
        return checkpoint

    @staticmethod
    def _window(definition: ExportDefinition, checkpoint: Checkpoint) -> Window | None:
        """Incremental mode's slice (None for a full run, and for an incremental run with nothing new)."""
        column = watermark_column(definition, checkpoint)
        if column is None or checkpoint.watermark_until is None:
            return None
        return Window(column, checkpoint.watermark_since, checkpoint.watermark_until)

    def _extract_run(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        template: HttpTemplate,
        parameters: dict[str, Any],
        window: Window | None,
        checkpoint: Checkpoint,
    ) -> Checkpoint:
        def save(progress: _Progress) -> None:
            nonlocal checkpoint
            checkpoint = replace(
                checkpoint,
                last_key=progress.last_key,
                next_batch_index=progress.next_batch_index,
                members=progress.members,
                sending=progress.sending,
            )
            self.extraction.save_checkpoint(checkpoint)

        start = _Progress(checkpoint.last_key, checkpoint.next_batch_index, checkpoint.members, checkpoint.sending)
        # The last page's progress is saved with the run's completion (one write, not two).
        size = self._record_size(template, checkpoint)
        job = _Job(request.run_id, definition, query, template, parameters, window, start, save, size, save_last=False)
        progress = self._extract(job)
        return replace(
            checkpoint,
            last_key=progress.last_key,
            next_batch_index=progress.next_batch_index,
            members=progress.members,
        )

    # --- a run split into key ranges ---------------------------------------------------------------------------

    def _split(
        self,
        request: RunRequested,
        definition: ExportDefinition,
        query: SavedQuery,
        template: HttpTemplate,
        parameters: dict[str, Any],
        window: Window | None,
        checkpoint: Checkpoint,
    ) -> list[RangeCheckpoint] | None:
        """The run's key ranges: planned before (a redelivered request), planned now (a large run that has not
        started), or None (extract the run in one piece)."""
        if checkpoint.ranges is not None:
            return self.extraction.run_ranges(request.run_id)
        fresh = checkpoint.last_key is None and checkpoint.next_batch_index == 0 and checkpoint.members == 0
        if self.range_members <= 0 or not fresh or not self.other_replicas():
            return None
        partitions = self.run_request_partitions()
        try:
            with QUERY_SECONDS.time():
                members = self.reader.count(query, parameters=parameters, window=window)
            ranges = range_count(members, range_members=self.range_members, partitions=partitions)
            if ranges < 2:
                return None
            ranks = boundary_ranks(members, ranges)
            with QUERY_SECONDS.time():
                found = self.reader.key_boundaries(query, ranks, parameters=parameters, window=window)
        except StoreUnavailable:
            raise  # waited out by the handler (see _wait_for_store)
        except QueryError as exc:
            # Counting the whole query, or finding its ranges' ends, may take longer than a page may: the pages
            # themselves may not (a query failing outright fails them the same way).
            # Its reason cut as a run failure's is (shared.events.Reason): a query's error may quote it at length.
            reason = bounded_reason(str(exc))
            log.warning("run not split: planning its key ranges failed", run_id=str(request.run_id), reason=reason)
            return None
        boundaries = list(dict.fromkeys(found))  # keys are unique; were they not, no range would be empty twice
        if not boundaries:
            return None
        spaces = index_spaces(len(boundaries) + 1, math.ceil(members / self._record_size(template, checkpoint)))
        lowers, uppers = [None, *boundaries], [*boundaries, None]
        plan = [
            RangeCheckpoint.planned(request.run_id, index, lowers[index], uppers[index], *spaces[index])
            for index in range(len(spaces))
        ]
        RUNS_SPLIT.inc()
        log.info(
            "run split into key ranges",
            run_id=str(request.run_id),
            definition=definition.name,
            members=members,
            ranges=len(plan),
            partitions=partitions,
        )
        return self.extraction.plan_ranges(request.run_id, plan)

    def _range_requests(
        self, request: RunRequested, definition: ExportDefinition, plan: list[RangeCheckpoint], checkpoint: Checkpoint
    ) -> list[Outgoing]:
        """One request a range still to extract, placed on partitions spread evenly (published by the loop
        before it commits the run request); the run's completion if every range was extracted already."""
        pending = [r for r in plan if r.state is RangeState.EXTRACTING]
        if not pending:
            if all(r.state is RangeState.EXTRACTED for r in plan):
                self._complete_split(plan[-1], definition.name, checkpoint, request.parameters)
            return []
        keys = placed_keys(request.run_id, len(plan), max(1, self.run_request_partitions()))
        return [
            Outgoing(
                self.topics.run_requests,
                keys[r.range_index],
                RangeRequested(
                    run_id=request.run_id,
                    definition=definition.name,
                    range_index=r.range_index,
                    ranges=len(plan),
                    parameters=request.parameters,
                ).to_bytes(),
            )
            for r in pending
        ]

    def handle_range(self, task: RangeRequested) -> list[Outgoing]:
        """Extract one key range of a split run; say the run's extraction is complete when it was the last."""
        ACTIVE_RUNS.inc()
        run_id = str(task.run_id)
        stored = self.extraction.range_checkpoint(task.run_id, task.range_index)
        if stored is None:
            ACTIVE_RUNS.dec()
            log.warning("range of an unknown run; request ignored", run_id=run_id, range=task.range_index)
            return []
        range_checkpoint: RangeCheckpoint = stored
        checkpoint = self.extraction.claim_extraction(task.run_id, task.definition)
        try:
            if checkpoint.completed or range_checkpoint.state is RangeState.STOPPED:
                log.info("range of a finished run; request ignored", run_id=run_id, range=task.range_index)
                if range_checkpoint.state is RangeState.EXTRACTING:  # the run failed or was cancelled
                    self.extraction.finish_range(range_checkpoint, RangeState.STOPPED)
                return []
            if range_checkpoint.state is RangeState.EXTRACTING:
                self._stop_if(task.run_id, {RunStatus.CANCELLED, RunStatus.FAILED})
                range_checkpoint = self._extract_range(task, checkpoint, range_checkpoint)
            self._complete_split(range_checkpoint, task.definition, checkpoint, task.parameters)
            return []
        except _RunCancelled:
            log.info("run cancelled or failed; range extraction stopped", run_id=run_id, range=task.range_index)
            self.extraction.finish_range(range_checkpoint, RangeState.STOPPED)
            self.extraction.save_checkpoint(replace(checkpoint, completed=True))
            return []
        except _RunFailure as failure:
            self.extraction.finish_range(range_checkpoint, RangeState.STOPPED)
            return self._fail(task.run_id, task.definition, failure, checkpoint)
        finally:
            ACTIVE_RUNS.dec()

    def _extract_range(
        self, task: RangeRequested, checkpoint: Checkpoint, range_checkpoint: RangeCheckpoint
    ) -> RangeCheckpoint:
        try:
            definition = self.definitions.get(ExportDefinition, task.definition)
        except (NotFound, StoredObjectInvalid) as exc:
            raise _RunFailure(f"unknown definition: {exc}", "unknown_definition") from None
        query, template, parameters = self._objects(definition, task.parameters, checkpoint)
        window = self._window(definition, checkpoint)
        log.info(
            "range extraction started",
            run_id=str(task.run_id),
            range=task.range_index,
            ranges=task.ranges,
            resume_after=range_checkpoint.resume_after,
            until=range_checkpoint.upper,
            next_batch=range_checkpoint.next_batch_index,
        )

        def save(progress: _Progress) -> None:
            nonlocal range_checkpoint
            range_checkpoint = replace(
                range_checkpoint,
                last_key=progress.last_key,
                next_batch_index=progress.next_batch_index,
                members=progress.members,
                sending=progress.sending,
            )
            self.extraction.save_range(range_checkpoint)

        job = _Job(
            task.run_id,
            definition,
            query,
            template,
            parameters,
            window,
            _Progress(
                range_checkpoint.resume_after,
                range_checkpoint.next_batch_index,
                range_checkpoint.members,
                range_checkpoint.sending,
            ),
            save,
            self._record_size(template, checkpoint),
            until=range_checkpoint.upper,
            end_batch_index=range_checkpoint.end_batch_index,
            stop_on=frozenset({RunStatus.CANCELLED, RunStatus.FAILED}),
            what=f"range {task.range_index} of the run",
        )
        progress = self._extract(job)
        return replace(
            range_checkpoint,
            last_key=progress.last_key,
            next_batch_index=progress.next_batch_index,
            members=progress.members,
        )

    def _complete_split(
        self, range_checkpoint: RangeCheckpoint, definition: str, checkpoint: Checkpoint, parameters: dict[str, Any]
    ) -> None:
        """End an extracted range; if it was the last, say the run's extraction is complete (with every range's
        members and batches). Said again by a redelivered request: the notifier's fold takes it as the same."""
        totals = self.extraction.finish_range(range_checkpoint, RangeState.EXTRACTED)
        log.info(
            "range extracted",
            run_id=str(range_checkpoint.run_id),
            range=range_checkpoint.range_index,
            members=range_checkpoint.members,
            batches=range_checkpoint.batches,
            last=totals is not None,
        )
        if totals is not None:
            # Retry batches go after the last range's own (its index space runs to the ledger's limit).
            last = self.extraction.run_ranges(range_checkpoint.run_id)[-1]
            self._complete(
                range_checkpoint.run_id,
                definition,
                checkpoint,
                totals.members,
                totals.batches,
                parameters=parameters,
                retry_index=last.next_batch_index,
            )

    # --- pages ---------------------------------------------------------------------------------------------------

    def _extract(self, job: _Job) -> _Progress:
        encoder = BatchEncoder(
            run_id=job.run_id,
            definition=job.definition.name,
            template=job.template.name,
            priority=job.definition.priority,
            batch_size=job.record_size,
            max_record_bytes=self.max_record_bytes,
            key_column=job.query.key_column,
        )
        return self._publish_pages(job, encoder, self._pages(job, encoder))

    def _pages(self, job: _Job, encoder: BatchEncoder) -> Iterator[_Read]:
        """The job's pages after its start. A resume's page that was being sent comes first, re-read exactly up to
        its recorded last key, in its recorded batches (:meth:`_resent`), and the pages after it are numbered from the
        index recorded after it at least (see :class:`~shared.domain.checkpoints.SendingPage`)."""
        sending = job.start.sending
        if sending is None:
            yield from self._read(job, job.start.last_key, job.until)
            return
        if sending.batches is not None:
            yield self._resent(job, encoder, sending, sending.batches)
        else:  # recorded without its batches: re-read whole, chunked again
            last: _Read | None = None
            for read in self._read(job, job.start.last_key, sending.last_key):
                if last is not None:
                    yield last
                last = read
            pages, page = (None, Page((), [], sending.last_key)) if last is None else (last.pages, last.page)
            yield _Read(pages, replace(page, last_key=sending.last_key), sending.next_batch_index)
        yield from self._read(job, sending.last_key, job.until)

    def _resent(self, job: _Job, encoder: BatchEncoder, sending: SendingPage, ends: list[list[str | int]]) -> _Read:
        """The page that was being sent, re-read (as rows: their keys) and split into its recorded batches, each
        under its index again: members inserted since it was first sent in batches numbered after its own (those
        of an earlier resume under their indexes again, their keys recorded whole); a batch whose members were all
        deleted since under its index with no members (the dispatcher records its outcome, 0 delivered)."""
        columns: tuple[str, ...] = ()
        rows: list[Any] = []
        for read in self._read(job, job.start.last_key, sending.last_key, database_json=False):
            assert isinstance(read.page, Page), "read as rows"
            columns = read.page.columns
            rows += read.page.rows
        page = Page(columns, rows, sending.last_key)
        if rows and job.query.key_column not in columns:  # the query no longer names its key: chunked again
            return _Read(None, page, sending.next_batch_index)
        at = list(columns).index(job.query.key_column) if rows else 0
        keys = [row_key(row[at]) for row in rows]
        recorded = sending.inserted or []
        inserted_from = sending.next_batch_index - len(recorded)
        where = {key: number for number, batch in enumerate(recorded) for key in batch}
        again: list[list[int]] = [[] for _ in recorded]
        rest: list[int] = []
        for position, key in enumerate(keys):
            (again[where[key]] if key in where else rest).append(position)
        groups, new = regroup([keys[p] for p in rest], ends, job.record_size)
        placed = [(job.start.next_batch_index + n, [rest[p] for p in g]) for n, g in enumerate(groups)]
        placed += [(inserted_from + n, positions) for n, positions in enumerate(again)]
        batches: list[EncodedBatch] = []
        left = [rest[p] for p in new]
        for index, positions in placed:
            if positions:
                first = self._encode(encoder, None, Page(columns, [rows[p] for p in positions], None), index)[0]
                batches.append(first)
                left += positions[first.members :]  # values grown past the byte bound since: after the page's
        left.sort()
        # An index of the page left without members (all deleted since) is sent empty: its records may never have
        # reached Kafka, and the run's completion waits for an outcome of each index up to the page's end.
        sent = {batch.batch_index for batch in batches}
        batches += [encoder.empty(i) for i in range(job.start.next_batch_index, inserted_from) if i not in sent]
        batches += [encoder.empty(inserted_from + n) for n, positions in enumerate(again) if not positions]
        batches.sort(key=lambda batch: batch.batch_index)
        extra = self._encode(encoder, None, Page(columns, [rows[p] for p in left], None), sending.next_batch_index)
        start, added = 0, []
        for batch in extra:
            added.append([keys[p] for p in left[start : start + batch.members]])
            start += batch.members
        resent = replace(
            sending, next_batch_index=sending.next_batch_index + len(extra), inserted=(recorded + added) or None
        )
        return _Read(None, page, resent.next_batch_index, batches + extra, resent)

    def _read(self, job: _Job, after: Any, until: Any, *, database_json: bool | None = None) -> Iterator[_Read]:
        as_json = self.database_json if database_json is None else database_json
        pages: MemberPages = self._query(
            lambda: self.reader.member_pages(
                job.query,
                page_size=page_size_for(job.record_size, self.page_size),
                after=after,
                until=until,
                parameters=job.parameters,
                window=job.window,
                database_json=as_json,
            )
        )
        if as_json and not pages.json:
            log.info(
                "members encoded from driver rows", run_id=str(job.run_id), query=job.query.name, reason=pages.reason
            )
        with pages:
            for page in self._timed(pages):
                yield _Read(pages, page)

    def _publish_pages(self, job: _Job, encoder: BatchEncoder, pages: Iterator[_Read]) -> _Progress:
        """Publish each page once the one before is acknowledged and checkpointed with this page's last key (one
        UPDATE, written ahead of its records): a crash repeats at most the page being sent, and its resume re-reads
        exactly that page (see :meth:`_pages`). Page N+1 is read while page N is in flight."""
        batch_topic = self.topics.member_batches_for(job.definition.priority.value)
        size = page_size_for(job.record_size, self.page_size)
        progress = job.start
        in_flight: tuple[InFlight, _Progress] | None = None
        for read in pages:
            page = read.page
            if in_flight is not None:  # the first page's check was the run's claim (a range's: before its read)
                self._stop_if(job.run_id, job.stop_on)
            if read.batches is not None:  # a resume's page re-read in its recorded batches
                batches = read.batches
                next_batch_index = max([read.next_batch_index] + [b.batch_index + 1 for b in batches])
            else:
                batches = self._encode(encoder, read.pages, page, progress.next_batch_index)
                next_batch_index = max(progress.next_batch_index + len(batches), read.next_batch_index)
            if next_batch_index > job.end_batch_index:
                raise _RunFailure(
                    f"{job.what} has more batches than its batch indexes allow (up to {job.end_batch_index - 1})",
                    "batch_indexes_exhausted",
                )
            # The page before acknowledged, its checkpoint says where this one ends: then this one is sent.
            sending = read.sending or SendingPage(
                page.last_key, next_batch_index, batch_ends(page, batches, job.query.key_column)
            )
            # A resume's page re-read whole and chunked again, in fewer batches than it was sent in: the indexes it
            # no longer fills are sent empty (its records may never have reached Kafka; the run's completion waits
            # for an outcome of each). After the ends written ahead: resumed again, they are sent empty again.
            filled = batches[-1].batch_index + 1 if batches else progress.next_batch_index
            batches += [encoder.empty(index) for index in range(filled, next_batch_index)]
            if in_flight is not None:
                self._settle(job, in_flight[0], replace(in_flight[1], sending=sending))
            elif progress.sending != sending and (progress.sending is not None or len(page) >= size):
                # The first page, written ahead on its own (a resume's recorded one, unchanged: written already).
                # Not a fresh start's only page (shorter than a page): re-read by size, nothing after it moves in.
                job.save(replace(progress, sending=sending))
            sent = self.send([Outgoing(batch_topic, f"{job.run_id}:{b.batch_index}", b.value) for b in batches])
            progress = _Progress(page.last_key, next_batch_index, progress.members + len(page))
            in_flight = (sent, progress)
            MEMBERS_EXTRACTED.labels(definition=job.definition.name).inc(len(page))
            PAGES_READ.inc()
            if read.pages is not None and read.pages.json and isinstance(page, Page):
                ROW_PAGES.inc()
        if in_flight is not None:
            self._settle(job, *in_flight, save=job.save_last)
        return progress

    def _encode(
        self, encoder: BatchEncoder, pages: MemberPages | None, page: Page | JsonPage, first_index: int
    ) -> list[EncodedBatch]:
        """The page's batch records; a member too large for a record fails the run, naming it."""
        try:
            if isinstance(page, Page):
                return encoder.encode_page(page.columns, page.rows, first_index)
            try:
                return encoder.encode_json_page(page.members, first_index)
            except MemberTooLarge:
                # Only the rows hold the member's key: read the page again as rows, to name it.
                rows = None if pages is None else self._query(lambda: pages.as_rows(page))
                if rows is None:
                    raise
                return encoder.encode_page(rows.columns, rows.rows, first_index)
        except MemberTooLarge as exc:
            raise _RunFailure(str(exc), "member_too_large") from None

    def _stop_if(self, run_id: uuid.UUID, statuses: set[RunStatus] | frozenset[RunStatus]) -> None:
        """Stop at a page boundary when the run was cancelled (one catalog read a page but the first: a cancel
        landing during a run's last page lets its extraction complete, the run staying cancelled); a range also
        stops when its run failed (another range's query failed, say)."""
        record = self.runs.get_run(run_id)
        if record is not None and record.status in statuses:
            raise _RunCancelled

    def _settle(self, job: _Job, sent: InFlight, progress: _Progress, *, save: bool = True) -> None:
        sent.wait()
        if save:
            job.save(progress)
        self._store_down_since.pop(job.run_id, None)  # a page was read: the store answers again

    def _timed(self, pages: MemberPages) -> Iterator[Page | JsonPage]:
        """The pages, each one's query time observed, query errors turned into run failures."""
        while True:
            page = self._query(lambda: next(pages, None))
            if page is None:
                return
            QUERY_SECONDS.observe(pages.read_seconds)
            yield page

    @staticmethod
    def _query(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except StoreUnavailable:
            raise  # waited out by the handler (see _wait_for_store), not the query's failure
        except QueryTimeout as exc:
            raise _RunFailure(str(exc), "query_timeout") from None
        except QueryError as exc:
            raise _RunFailure(str(exc), "query_error") from None

    def _fail(
        self, run_id: uuid.UUID, definition: str, failure: _RunFailure, checkpoint: Checkpoint | None
    ) -> list[Outgoing]:
        # A run request naming no catalog definition is labelled as such: its name is whatever the record said.
        known = failure.label != "unknown_definition"
        RUNS_FAILED.labels(definition=definition if known else UNKNOWN_DEFINITION, reason=failure.label).inc()
        # The event first: its reason is cut (shared.events.Reason), and the log says what the event says.
        failed = RunFailed(run_id=run_id, definition=definition, reason=failure.reason)
        log.warning("run failed", run_id=str(run_id), definition=definition, reason=failed.reason)
        if checkpoint is not None:
            self.extraction.save_checkpoint(replace(checkpoint, completed=True))
        return [self._event(str(run_id), failed)]
