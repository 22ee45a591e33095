"""Dispatch one member batch: render, authenticate, deliver, and report the outcome."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from services.dispatcher.breakers import Admission, ProfileBreakers
from services.dispatcher.delivery import AttemptResult, AttemptWitness, Deliverer, DeliveryResult
from services.dispatcher.fleet_limits import FleetLimits, ProfileLimits, Slots, read_stamp
from services.dispatcher.inspector import AttemptInspector
from services.dispatcher.member_outcomes import member_keys, refused_members
from services.dispatcher.metrics import (
    BATCH_DECODE_FALLBACKS,
    BATCHES_OF_CANCELLED_RUNS,
    DEAD_LETTERS,
    MEMBERS_DELIVERED,
    MEMBERS_FAILED,
    RATE_LIMIT_RATE,
    RATE_LIMIT_WAIT_SECONDS,
    RATE_LIMIT_WAITS,
    REQUESTS,
    ROUND_HANDED_BACK,
    STATUS_CLASSES,
    InFlightCount,
    RequestTally,
    in_flight_count,
)
from services.dispatcher.partner_auth import OAuthTokenCache, auth_headers, query_key_field, with_query_field
from services.dispatcher.rate_limit import AdaptiveRateLimiter, LearnedRateLimit, holds_promises_of
from services.dispatcher.render_offload import Renderer
from services.dispatcher.request_workers import RequestWorkers
from services.dispatcher.round_admission import (
    RoundAdmission,
    RoundOver,
    Verdict,
    admission_order,
    admitted_requests,
)
from services.dispatcher.splitting import IsolationResult, Refused, Slice, deliver_in_requests
from services.dispatcher.wakeup import Wakeup
from shared.application.ports import DefinitionsReader, RunsReader
from shared.domain.catalog_objects import (
    ApiKeyAuth,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    OAuth2ClientCredentials,
)
from shared.domain.http_fields import header_value_problem, merged_headers
from shared.domain.masking import Masking
from shared.domain.rendering import DEFAULT_LIMITS, PreparedRequest, RenderedRequest, RenderLimits
from shared.domain.runs import RunStatus
from shared.errors import ExportError, PermanentError, StoredObjectInvalid
from shared.events import BatchOutcome, DeadLetter, MemberBatch
from shared.exception_reasons import exception_reason, failure_fields
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord
from shared.kafka.records import round_contexts
from shared.member_batch_decoding import decode_member_batch, fast_path_problems
from shared.metrics import UNKNOWN_DEFINITION
from shared.outages import DependencyUnavailable, is_outage
from shared.outbound.failure_reasons import masked_reason
from shared.outbound.partner_network import PartnerNetwork
from shared.outbound.signing import signature_headers
from shared.topics import Topics
from shared.tracing import (
    annotate,
    attached,
    current_http_headers,
    exported_span,
    exporting,
    record_http_result,
)

log = structlog.get_logger(__name__)
T = TypeVar("T", bound=CatalogObject)


def decode_batch(value: bytes) -> MemberBatch:
    """A member-batch record's batch, as the dispatcher decodes it (:func:`decode_member_batch`: the model's batch,
    faster); a record left to the model's own decoding is counted in
    ``member_export_dispatcher_batch_decode_fallbacks_total``."""
    return decode_member_batch(value, on_fallback=BATCH_DECODE_FALLBACKS.inc)


def warn_of_slow_batch_decoding() -> list[str]:
    """At start-up: one warning naming what in :class:`MemberBatch` turns :func:`decode_batch`'s fast path off, if
    anything does (every record is then the model's to decode and counts as a fallback: slower, and otherwise said
    by the counter alone). The problems, none for the contract the fast path is written for."""
    problems = fast_path_problems(MemberBatch)
    if problems:
        log.warning(
            "member batches decoded without the fast path",
            problems=problems,
            counted_in="member_export_dispatcher_batch_decode_fallbacks_total",
        )
    return problems


#: The ``profile`` label of a batch whose template or profile could not be read (missing, or invalid now).
UNKNOWN_PROFILE = "(unknown)"
#: The outcome of a batch of no members: no request, no attempt (its outcome says 0 delivered, 0 failed).
NOTHING_SENT = DeliveryResult(success=True, status=None, attempts=0, error=None)
#: How long a round goes on beginning batches (seconds): those not begun by then go to the next round.
DEFAULT_ROUND_SECONDS = 10.0
#: Extra requests a batch may spend isolating refused members (about 2 log2(batch size) per member).
DEFAULT_SPLIT_BUDGET = 64


class CatalogCache:
    """Templates and profiles read through a short-lived cache: edits take effect within ``ttl`` seconds.

    Read on the dispatcher's event loop: a miss (once per object and ``ttl``) is one short catalog
    read that holds the loop for its duration, a price the cache makes rare.
    """

    #: Answers kept at most (runs come and go; the oldest answer is forgotten first).
    MAX_ENTRIES = 10_000

    def __init__(self, definitions: DefinitionsReader, runs: RunsReader, ttl: float) -> None:
        self.definitions, self.runs = definitions, runs
        self.ttl = ttl
        #: key: (expiry, answer, when it was read: :func:`.fleet_limits.read_stamp`).
        self._entries: dict[Hashable, tuple[float, Any, int]] = {}

    def _cached(self, key: Hashable, load: Callable[[], Any]) -> tuple[float, Any, int]:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:
            value = load()
            entry = self._entries[key] = (now + self.ttl, value, read_stamp())
            if len(self._entries) > self.MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
        return entry

    def cancelled(self, run_id: uuid.UUID) -> bool:
        """Whether the run was cancelled (known within ``ttl`` seconds of the cancellation)."""

        def load() -> bool:
            record = self.runs.get_run(run_id)
            return record is not None and record.status is RunStatus.CANCELLED

        cancelled: bool = self._cached(run_id, load)[1]
        return cancelled

    def get(self, kind: type[T], name: str) -> T:
        return self.read(kind, name)[0]

    def definition_label(self, name: str) -> str:
        """The label a batch's series are counted under: its definition's name when the catalog has that definition
        (read through the cache, once per name and ``ttl``), :data:`~shared.metrics.UNKNOWN_DEFINITION` otherwise (a
        name from the topic must not create series). An outage of the catalog is raised; any other error reading it
        gives the unknown label, not remembered (the next batch reads it again)."""

        def load() -> bool:
            try:
                self.definitions.get(ExportDefinition, name)
            except (LookupError, StoredObjectInvalid):  # NotFound is a LookupError
                return False
            return True

        try:
            known: bool = self._cached(("definition label", name), load)[1]
        except Exception as exc:
            if is_outage(exc):
                raise
            return UNKNOWN_DEFINITION
        return name if known else UNKNOWN_DEFINITION

    def read(self, kind: type[T], name: str) -> tuple[T, int]:
        """The object and when it was read from the catalog (:func:`.fleet_limits.read_stamp`): of two answers, the
        one read later is at least as new."""
        _, value, read = self._cached((kind.__name__, name), lambda: self.definitions.get(kind, name))
        assert isinstance(value, kind)
        return value, read


def _nothing() -> None:
    """A request finished, and no round counts them."""


@dataclass(slots=True)
class _BatchRequests:
    """What every request of one batch shares, made once a batch (:meth:`Dispatcher._deliver`)."""

    batch: MemberBatch
    template: HttpTemplate
    profile: ConnectionProfile
    #: The batch's :attr:`~shared.events.MemberBatch.identity` (the Idempotency-Key's stem).
    identity: str
    prepared: PreparedRequest
    #: The definition and profile its requests are counted under.
    labels: tuple[str, str]
    network: PartnerNetwork | None
    inspect: AttemptWitness | None
    #: The profile's in-flight count, which its gauge reads when scraped (its series is never removed).
    in_flight: InFlightCount
    oauth: bool
    #: The batch's attempts, counted for the request metrics (flushed at the end of the batch, a failure at once, a
    #: success within a second: :class:`~.metrics.RequestTally`).
    tally: RequestTally
    #: The ``traceparent`` (and ``tracestate``) of the batch's trace context, which its requests carry while spans
    #: are not exported (while they are, each request carries its own span's, read per attempt: a request's retries
    #: share its span).
    trace_headers: dict[str, str]
    #: The profile's authentication header once resolved and checked, unless it is an OAuth token (None: not yet).
    credentials: dict[str, str] | None = None
    #: The query parameter the profile's API key travels in (``in: query``; None: it has none) and, once resolved (as
    #: :attr:`credentials`, once a batch), its field ``name=<the key, URL-encoded>`` (None: not yet).
    query_key: str | None = None
    query_field: str | None = None
    #: The end of the batch's round (the dispatcher's clock; None: none): no attempt begins after it.
    ends: float | None = None
    #: Every request's headers, the Idempotency-Key's value aside (:data:`_KEY_PLACEHOLDER`), once the batch's requests
    #: are known to share them (constant template headers, static credentials, no signature, the batch's
    #: ``traceparent``): copied for each request, its key set, rather than merged anew (None: merged each attempt).
    headers: dict[str, str] | None = None
    #: When ``profile`` was read (:func:`.fleet_limits.read_stamp`): read before an edit, it gets the edited limits.
    profile_read: int | None = None


#: The Idempotency-Key's value in :attr:`_BatchRequests.headers`, replaced by each request's key (never sent).
_KEY_PLACEHOLDER = "\x00"


class Stopping(DependencyUnavailable):
    """The dispatcher stopped before the batch was delivered: the consumer loop hands it back, uncommitted."""


class Dispatcher:
    """Handles member batches, on one asyncio event loop (its client and limits belong to that loop)."""

    #: How often a round in progress checks whether the service is stopping (seconds).
    STOP_CHECK_SECONDS = 0.2
    #: (definition, profile) pairs whose series are started at 0 (the catalog bounds them; this bounds memory).
    MAX_COUNTED = 100_000

    def __init__(
        self,
        *,
        objects: CatalogCache,
        deliverer: Deliverer,
        tokens: OAuthTokenCache,
        topics: Topics,
        split_budget: int = DEFAULT_SPLIT_BUDGET,
        concurrency: int = 8,
        round_requests: int = 1024,
        max_round_records: int = 64,
        round_seconds: float = DEFAULT_ROUND_SECONDS,
        round_end_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        render_limits: RenderLimits = DEFAULT_LIMITS,
        inspector: AttemptInspector | None = None,
        breakers: ProfileBreakers | None = None,
        fleet: FleetLimits | None = None,
    ) -> None:
        self.objects = objects
        #: Keeps sampled attempts for ``exportctl attempts`` (None: nothing kept).
        self.inspector = inspector
        #: The profiles' circuit breakers (a batch meeting an open one is held back: :mod:`.breakers`).
        self.breakers = breakers or ProfileBreakers()
        #: The profiles' limits, at this replica's share of them when it has a fleet (:mod:`.fleet_limits`).
        self.fleet = fleet or FleetLimits(None)
        self.renderer = Renderer(render_limits)
        self.deliverer = deliverer
        self.tokens = tokens
        self.topics = topics
        self.split_budget = split_budget
        self.sleep = sleep
        self._counted: set[tuple[str, str]] = set()  # (definition, profile) whose series exist
        #: Every request (rendering included, so rendered bodies in memory too), whatever the record it comes from,
        #: is handled by one of ``concurrency`` workers, in the order its batch submitted it (:mod:`.request_workers`).
        self.workers = RequestWorkers(concurrency)
        #: Set when the service stops (the consumer loop's event): rounds in progress are abandoned.
        self.stopping = threading.Event()
        self.round_requests, self.max_round_records = round_requests, max_round_records
        #: How long a round begins batches, and the requests it may have begun and not finished at once
        #: (:mod:`.round_admission`): a round's time is bounded whatever its size.
        self.round_seconds, self.clock = round_seconds, clock
        #: How long after its start a round may begin an attempt (None: no end): the requests not sent by then
        #: (waiting for a worker, a profile's slot or rate, or to retry) are not sent, their batches handed back
        #: (:class:`~.round_admission.RoundOver`), so a round ends within the poll interval whatever its partners do
        #: (:attr:`~services.dispatcher.settings.DispatcherSettings.round_end_seconds`).
        self.round_end_seconds = round_end_seconds
        self.admitted_requests = admitted_requests(concurrency)
        # Requests per record, at most, in the last round; until a round was seen, assume records are full.
        self._record_requests = round_requests

    def next_poll_records(self) -> int:
        """Records the next poll may take: about ``round_requests`` requests' worth, judged by the last round's
        records (a one-member template's record carries dozens of requests, a batch template's one). What a round
        costs in polls, outcomes and commits is paid per round; its time is bounded by its admission
        (:meth:`handle_all`), whatever its size."""
        return max(1, min(self.max_round_records, self.round_requests // self._record_requests))

    def _start_series(self, definition: str, profile: str) -> None:
        """A (definition, profile) seen for the first time gets its failure series at 0 before its first
        request: a counter series that first appears at 1 is invisible to ``increase()`` and its alerts."""
        if (definition, profile) in self._counted or len(self._counted) >= self.MAX_COUNTED:
            return
        self._counted.add((definition, profile))
        MEMBERS_DELIVERED.labels(definition, profile)
        MEMBERS_FAILED.labels(definition, profile)
        DEAD_LETTERS.labels(definition)
        for status_class in STATUS_CLASSES:
            REQUESTS.labels(definition, profile, status_class)

    def _limits_of(self, profile: ConnectionProfile, read: int | None) -> ProfileLimits:
        """The profile's limits, kept across batches (the adapted rate too) until the profile's limit is edited (a
        ``profile`` read before the limits' config gets the current ones); raises the batch's hold while this
        replica's share of them is 0. The profile's timeout counts in the fleet's heartbeats while it lives (while
        a batch of it has an attempt out or to come: :attr:`.FleetLimits.live_seconds`)."""
        return self.fleet.limits_of(profile.name, profile.rate_limit, profile.timeout_seconds, read, profile)

    async def handle_all(self, batches: list[MemberBatch]) -> list[list[Outgoing] | BaseException]:
        """Deliver a poll's batches, their requests ``concurrency`` at a time; per batch its records, what it
        raised, or :class:`HoldRecord` (until now) for a batch handed to the next round.

        The batches are begun in :func:`.round_admission.admission_order` (the most urgent priority first, the
        round's order within a priority) while the requests begun and not finished stay within
        ``admitted_requests`` (:mod:`.round_admission`); once the round has run for ``round_seconds``, those not
        begun are handed back: the consumer loop holds them uncommitted and hands them to its next round (none of
        their requests was sent, and none is dead-lettered). A begun batch finishes normally, retries and all. So a
        round's time is bounded whatever its size: ``round_seconds``, then the requests begun by then.

        Rounds may be delivered at once (the consumer loop's rounds in flight): their requests share the
        ``concurrency`` bound, the earlier round's first (the workers take requests in the order they were
        submitted: :mod:`.request_workers`).

        Once ``stopping`` is set (SIGTERM), the batches still being delivered are abandoned (their requests
        cancelled, retries included) and, with those not begun, answered :class:`Stopping`: the loop hands them
        back uncommitted, for the next owner of their partition (a request cut short may be sent again: same
        Idempotency-Key).
        """
        record_requests = [1]  # this round's most requests in one record
        contexts = round_contexts(batches)
        order = admission_order([batch.priority for batch in batches])  # positions in batches, begun in this order
        admission = RoundAdmission(self.admitted_requests, self.round_seconds, self.clock())
        ends = None if self.round_end_seconds is None else admission.started + self.round_end_seconds
        ready = Wakeup()  # woken when the batch waiting to begin fits
        tasks: list[asyncio.Future[list[Outgoing]]] = []
        try:
            while len(tasks) < len(batches) and not self.stopping.is_set():
                batch = batches[order[len(tasks)]]
                requests = self._requests_of(batch)
                verdict = admission.verdict(requests, self.clock())
                if verdict is Verdict.HAND_BACK:
                    break
                if verdict is Verdict.WAIT:
                    await ready.wait(min(self.STOP_CHECK_SECONDS, admission.seconds_left(self.clock())))
                    continue
                index = admission.begin(requests)
                tasks.append(self._begin(batch, contexts[order[index]], record_requests, admission, index, ready, ends))
            pending: set[asyncio.Future[list[Outgoing]]] = set(tasks)
            while pending and not self.stopping.is_set():
                _, pending = await asyncio.wait(pending, timeout=self.STOP_CHECK_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            # Each begun batch's result, by its position in the round (the loop reads them in the round's order).
            results = {position: self._result_of(task) for position, task in zip(order, tasks, strict=False)}
            over = sum(isinstance(result, RoundOver) for result in results.values())
            if over:
                ROUND_HANDED_BACK.inc(over)
                log.warning(
                    "round end passed: batches whose requests were not sent handed to the next round",
                    handed_back=over,
                    round_end_seconds=self.round_end_seconds,
                )
            if len(tasks) < len(batches) and not self.stopping.is_set():
                ROUND_HANDED_BACK.inc(len(batches) - len(tasks))
                log.info(
                    "round deadline passed: batches handed to the next round",
                    begun=len(tasks),
                    handed_back=len(batches) - len(tasks),
                    round_seconds=self.round_seconds,
                )
            return [results[position] if position in results else self._not_begun() for position in range(len(batches))]
        finally:
            self._record_requests = record_requests[0]

    def _begin(
        self,
        batch: MemberBatch,
        context: Context | None,
        record_requests: list[int],
        admission: RoundAdmission,
        index: int,
        ready: Wakeup,
        ends: float | None = None,
    ) -> asyncio.Future[list[Outgoing]]:
        """Begin delivering ``batch`` (the round's ``index``-th), its requests counted off ``admission`` as they
        finish; ``ready`` is woken when the batch waiting to begin fits; ``ends``: the round's end (no attempt
        begins after it)."""

        def request_done() -> None:
            if admission.request_done(index):
                ready.notify()

        def batch_done(_: object) -> None:
            if admission.batch_done(index):
                ready.notify()

        task = asyncio.ensure_future(self._handle_in(batch, context, record_requests, request_done, ends))
        task.add_done_callback(batch_done)
        return task

    def _requests_of(self, batch: MemberBatch) -> int:
        """The requests ``batch`` will make (its isolating splits aside): 1 when its template cannot be read (it
        fails at once, or is handed back on an outage)."""
        try:
            batch_size = self.objects.get(HttpTemplate, batch.template).batch_size
        except Exception:  # noqa: BLE001 - its handling says why
            return 1
        return max(1, -(-len(batch.members) // batch_size))

    def _not_begun(self) -> BaseException:
        if self.stopping.is_set():
            return Stopping("the dispatcher is stopping: the batch is handed back for redelivery")
        # Due at once, and held since now: the longest held go first among their priority (HeldRecords.due).
        return HoldRecord(
            "the round's deadline passed before the batch began: handed to the next round", time.monotonic()
        )

    @staticmethod
    def _result_of(task: asyncio.Future[list[Outgoing]]) -> list[Outgoing] | BaseException:
        if task.cancelled():
            return Stopping("the dispatcher is stopping: the batch is handed back for redelivery")
        return task.exception() or task.result()

    async def _handle_in(
        self,
        batch: MemberBatch,
        trace_context: Context | None,
        record_requests: list[int],
        request_done: Callable[[], None] | None = None,
        ends: float | None = None,
    ) -> list[Outgoing]:
        """:meth:`handle` in the batch's trace context (its record's span, told which batch it is): its task's
        logs carry the trace's ids, its requests the trace's ``traceparent``. ``record_requests[0]`` is raised to
        the batch's request count."""
        with attached(trace_context):
            annotate(
                trace_context,
                {
                    "member_export.run_id": str(batch.run_id),
                    "member_export.definition": batch.definition,
                    "member_export.batch_index": batch.batch_index,
                },
            )
            return await self.handle(batch, record_requests, request_done, ends)

    async def handle(
        self,
        batch: MemberBatch,
        record_requests: list[int] | None = None,
        request_done: Callable[[], None] | None = None,
        ends: float | None = None,
    ) -> list[Outgoing]:
        """Deliver a batch (isolating refused members) and return its outcome and dead letters.

        Every batch gets an outcome: whatever fails while handling it (a template that does not render, a
        request that cannot be made, a template or profile that is missing or no longer valid, an error of
        ours) fails its members with the reason, and they are dead-lettered. The reason is masked (the profile's
        secrets when it is known, credential shapes) and cut as a partner's refusal is, and so is what the log
        line says of the exception (:mod:`shared.exception_reasons`). Only an outage of the catalog is
        raised (:func:`shared.outages.is_outage`): the consumer loop hands the batch back and handles it again.
        A cancelled run's batches are dropped: nothing is sent, no outcome (the run's record is final).
        ``record_requests[0]`` (its round's tally, :meth:`handle_all`) is raised to the batch's request count, and
        ``request_done`` called as each of its requests finishes (the round's admission). Past ``ends`` (its round's
        end, :attr:`round_end_seconds`) no attempt of its begins: the batch is handed back (:class:`RoundOver`).
        """
        try:
            tally = record_requests if record_requests is not None else [1]
            return await self._handle(batch, tally, request_done or _nothing, ends)
        except HoldRecord:
            raise  # its profile's circuit breaker is open: the consumer loop holds the batch back
        except Exception as exc:  # the batch's failure, never the consumer's
            if is_outage(exc):
                raise  # the catalog is away: the consumer hands the batch back and handles it again later
            # Its message may quote anything (a URL's token, a header, a profile's secret): masked and cut.
            masking = functools.partial(self._masking, self._profile_of(batch))
            reason = exception_reason(exc, masking, lead="the dispatcher could not handle the batch: ")
            log.error(
                "batch handling failed",
                run_id=str(batch.run_id),
                batch_index=batch.batch_index,
                **failure_fields(exc, reason),
            )
            return self._failed(batch, reason, label=self._label_of(batch))

    def _label_of(self, batch: MemberBatch) -> str:
        """The batch's definition label (:meth:`CatalogCache.definition_label`) for a batch that failed: unknown when
        it cannot be read."""
        try:
            return self.objects.definition_label(batch.definition)
        except Exception:  # noqa: BLE001 - the catalog is away: its series under the unknown definition
            return UNKNOWN_DEFINITION

    def _profile_of(self, batch: MemberBatch) -> ConnectionProfile | None:
        """The batch's profile, when it can be read (its secrets are masked in a failure's reason)."""
        try:
            return self.objects.get(ConnectionProfile, self.objects.get(HttpTemplate, batch.template).profile)
        except Exception:  # noqa: BLE001 - not known: the reason is masked by credential shapes only
            return None

    def _masking(self, profile: ConnectionProfile | None) -> Masking:
        """What a failure's reason is masked with: ``profile``'s secrets and the OAuth tokens cached for it (the
        deliverer's maskings, cached), and credential shapes; shapes only without a profile."""
        if profile is None:
            return self.deliverer.maskings.of(None)
        tokens = [("Authorization", f"Bearer {token}") for token in self.tokens.cached(profile.name)]
        return self.deliverer.maskings.of(profile, tokens)

    def _failed(self, batch: MemberBatch, reason: str, label: str, profile: str = UNKNOWN_PROFILE) -> list[Outgoing]:
        failed = DeliveryResult(success=False, status=None, attempts=0, error=reason)
        return self._outcome(
            batch, IsolationResult(0, [Refused(Slice(0, len(batch.members)), failed)], 0, failed), profile, label
        )

    async def _handle(
        self,
        batch: MemberBatch,
        record_requests: list[int],
        request_done: Callable[[], None],
        ends: float | None = None,
    ) -> list[Outgoing]:
        if self.objects.cancelled(batch.run_id):
            BATCHES_OF_CANCELLED_RUNS.inc()
            return []
        if not batch.members:  # nothing to send (no request of an empty list): its outcome alone, 0 delivered
            return self._outcome(batch, IsolationResult(0, [], 0, NOTHING_SENT), None, UNKNOWN_DEFINITION)
        # Once a batch, before anything is sent (an outage hands the batch back): the name its series are counted
        # under, the definition's when the catalog has it (a made-up name from the topic creates no series).
        label = self.objects.definition_label(batch.definition)
        try:
            template = self.objects.get(HttpTemplate, batch.template)
            profile, profile_read = self.objects.read(ConnectionProfile, template.profile)
        except ExportError as exc:  # missing, or stored before a rule it now breaks
            return self._failed(batch, masked_reason(Masking, None, str(exc)), label)
        self.breakers.check(profile, profile_read)
        self._limits_of(profile, profile_read)  # a share of 0 holds the batch back here, before anything is rendered
        masking = functools.partial(self._masking, profile)
        identity = batch.identity  # once a batch, not once a request: it formats the run's UUID
        # Once a batch too: the URL, constant headers and run values its one-member requests share, and what its
        # requests' delivery shares (labels, network settings, the inspector's witness, static credentials).
        prepared = self.renderer.prepare(template, profile, batch)
        inspect = None
        if self.inspector is not None:
            # Under the label its series have: a definition the catalog does not have (a made-up or stale name from the
            # topic) is "(unknown)", never a name no one saved (one slot for all, bounded as the metrics are).
            inspect = self.inspector.watch(label, profile, batch.run_id, batch.batch_index)
        shared = _BatchRequests(
            batch=batch,
            template=template,
            profile=profile,
            identity=identity,
            prepared=prepared,
            labels=(label, profile.name),
            network=PartnerNetwork.of(profile),
            inspect=inspect,
            in_flight=in_flight_count(profile.name),
            oauth=isinstance(profile.auth, OAuth2ClientCredentials),
            query_key=profile.auth.name if isinstance(profile.auth, ApiKeyAuth) else None,
            tally=RequestTally((label, profile.name)),
            trace_headers=current_http_headers(),  # the batch's context, which its requests are handled in
            ends=ends,
            profile_read=profile_read,
        )

        async def send(part: Slice) -> DeliveryResult:
            try:  # on one of the workers, which bound the requests handled at once (see __init__)
                self._before_round_end(shared)  # waited for a worker until the round's end: not sent
                limits = self._limits_of(shared.profile, shared.profile_read)
                if limits.slots is not None:
                    return await self._deliver_in_slot(shared, part, limits.slots)
                # No max_in_flight: no slot to take; _deliver without its coroutine (a request's CPU).
                delivery, ticket = self._request(shared, part, limits)
                try:
                    return await delivery
                finally:
                    self._request_done(shared, ticket)
            except HoldRecord:
                raise
            except ExportError as exc:  # e.g. a template that does not render: its reason may quote a secret
                error = masked_reason(masking, None, str(exc))
                return DeliveryResult(success=False, status=None, attempts=0, error=error)
            except Exception as exc:  # this request's failure: its members are dead-lettered
                if is_outage(exc):
                    raise
                error = exception_reason(exc, masking)
                log.error(
                    "request failed",
                    run_id=str(batch.run_id),
                    batch_index=batch.batch_index,
                    **failure_fields(exc, error),
                )
                return DeliveryResult(success=False, status=None, attempts=0, error=error)
            finally:
                request_done()  # however it ended: the round may begin its next batch

        self._start_series(label, profile.name)
        requests = -(-len(batch.members) // template.batch_size)
        record_requests[0] = max(record_requests[0], requests)
        try:
            isolated = await deliver_in_requests(
                len(batch.members),
                template.batch_size,
                send,
                split_budget=self.split_budget,
                gather=self.workers.gather,
            )
        finally:  # however the batch ended (cancelled, held back too): its attempts are in the series
            shared.tally.flush()
        return self._outcome(batch, isolated, profile.name, label)

    async def _deliver_in_slot(self, shared: _BatchRequests, part: Slice, slots: Slots) -> DeliveryResult:
        """:meth:`_deliver` holding one of the profile's ``max_in_flight`` ``slots``, waited for aside (the request
        holds no worker meanwhile: :meth:`.RequestWorkers.aside`), before its body is rendered (a request waiting
        for its slot holds no body), until the round's end at most."""
        name = shared.profile.name
        left = None if shared.ends is None else functools.partial(self._round_left, shared.ends)
        await slots.take(lambda: self.fleet.held(name), left, self.workers.aside)
        try:
            return await self._deliver(shared, part, self._limits_of(shared.profile, shared.profile_read))
        finally:
            slots.give()

    async def _deliver(self, shared: _BatchRequests, part: Slice, limits: ProfileLimits) -> DeliveryResult:
        """Deliver ``part`` of the batch whose requests share ``shared`` (made once a batch: its identity, prepared
        renderer, metric labels, network settings, credentials when they are static), within the profile's
        ``limits`` (its slot taken already, when it has ``max_in_flight``): :meth:`_request`, awaited."""
        delivery, ticket = self._request(shared, part, limits)
        try:
            return await delivery
        finally:
            self._request_done(shared, ticket)

    def _request(
        self, shared: _BatchRequests, part: Slice, limits: ProfileLimits
    ) -> tuple[Awaitable[DeliveryResult], list[Admission | None] | None]:
        """What delivers ``part`` (:meth:`_deliver`; the batch's ``send`` awaits it itself, without a coroutine of
        ours around it), and the circuit breaker's admission of its attempt under way, for :meth:`_request_done`
        once it is awaited (None: none to give back, the awaitable counts itself in flight: :meth:`_in_flight`). A
        request with an admission is counted in flight here, until :meth:`_request_done`.

        Its body is rendered once admitted for its first attempt (by the circuit breaker, with a token of the rate),
        not before: a request waiting aside for a probe or a token holds no body. A retry sends the same body again,
        unless it waits for its token: it drops the body and renders it again once admitted. A render that fails (a
        template error, its CPU deadline) fails the request as before (attempts 0, the masked reason), its token and
        probe given back: nothing was sent. When the batch's requests share their headers
        (:attr:`_BatchRequests.headers`), the render makes the request whole, this request's headers in it: its
        first attempt sends it as it is (one :class:`RenderedRequest` a request, not two); a retry copies the headers
        again."""
        batch, template, profile = shared.batch, shared.template, shared.profile
        whole = part.size == len(batch.members)
        members = batch.members if whole else batch.members[part.start : part.stop]
        # Stable across redeliveries: the split of a batch is the same every time, so is each key.
        key = shared.identity if whole else f"{shared.identity}:{part.start}-{part.stop}"
        # Rendered once admitted (admit), for every attempt; then, when rendered with this request's headers, the
        # request its first attempt sends as it is (taken by it: None after).
        body: list[RenderedRequest | None] = [None, None]

        def make_request() -> RenderedRequest | Awaitable[RenderedRequest]:  # per attempt: a token, a signature...
            rendered = body[0]
            assert rendered is not None  # admit() rendered it before the first attempt
            if body[1] is not None:  # rendered whole, this request's headers in it: its first attempt sends it
                body[1] = None
                return rendered
            batch_headers = shared.headers
            if batch_headers is not None and not exporting():  # the batch's headers, this request's key
                headers = batch_headers.copy()
                headers["Idempotency-Key"] = key
                return RenderedRequest(rendered.method, rendered.url, headers, rendered.content)
            if shared.credentials is None:  # fetched (a coroutine), unless kept for the batch
                return self._request_with_credentials(shared, rendered, key)
            return self._merged_request(shared, rendered, key, shared.credentials)

        ticket: list[Admission | None] = [None]  # the circuit breaker's admission of the attempt under way

        def admit() -> Awaitable[None] | None:  # per attempt: the round's end, the fleet's share, the breaker, the rate
            self._before_round_end(shared)  # no attempt (a retry neither) begins after the round's end
            self.fleet.before_attempt(profile.name)  # counted out meanwhile, or its share shrunk: the batch waits
            # A profile without a breaker, and none known by its name, is admitted as is (no coroutine to pay for).
            if profile.circuit_breaker is not None or self.breakers.knows(profile.name):
                return self._admit_by_breaker(shared, limits, ticket, body, members, key)
            # Nothing to wait for (a token at once, a quick render): admitted here, without a coroutine (None).
            return self._admit_rate(shared, limits, body, members, key)

        def adapt(attempt: AttemptResult) -> None:
            admitted, ticket[0] = ticket[0], None
            self.breakers.record(profile, admitted, attempt)  # raises the batch's hold when the breaker opens
            limiter = self.fleet.rate_of(profile.name, limits)  # the profile's limiter now (edited meanwhile?)
            before = limiter.rate
            if attempt.status == 429:
                limiter.throttled()
            elif attempt.success:
                limiter.succeeded()
            if limiter.rate is not None:
                RATE_LIMIT_RATE.labels(profile=profile.name).set(limiter.rate)
            elif before is not None:  # a learned limit was dropped: the profile is unlimited again
                RATE_LIMIT_RATE.remove(profile.name)

        if shared.oauth or exporting():
            deliver = functools.partial(self._delivery, shared, make_request, admit, adapt)

            async def delivered() -> DeliveryResult:
                result = await deliver()
                if result.status == 401:
                    # A token may be revoked before its expiry: fetch a new one and try once more.
                    self.tokens.forget(profile.name)
                    result = await deliver()
                return result

            # Only an OAuth profile tries again after a 401 (no extra coroutine for the others).
            in_flight = delivered if shared.oauth else deliver
            return self._in_flight(shared, template.method.value, in_flight, ticket), None
        # The common case (no OAuth token, no span a request): what _in_flight does without a span, without its
        # coroutine, partial or closure a request; counted out by _request_done.
        shared.in_flight.count += 1
        return self._delivery(shared, make_request, admit, adapt), ticket

    async def _admit_by_breaker(
        self,
        shared: _BatchRequests,
        limits: ProfileLimits,
        ticket: list[Admission | None],
        body: list[RenderedRequest | None],
        members: list[dict[str, Any]],
        key: str,
    ) -> None:
        """A request's admission (:meth:`_request`'s ``admit``) by its profile's circuit breaker (``ticket[0]``, its
        admission), then :meth:`_admit_rate`."""
        ticket[0] = await self.breakers.admit(shared.profile, self.workers.aside, shared.profile_read)
        # A wait for a probe (and for a worker after it) may have outlasted the round: its ticket is given
        # back (the caller's _in_flight, or _request_done, cancels it) and the batch handed back.
        self._before_round_end(shared)
        admitting = self._admit_rate(shared, limits, body, members, key)
        if admitting is not None:
            await admitting

    def _admit_rate(
        self,
        shared: _BatchRequests,
        limits: ProfileLimits,
        body: list[RenderedRequest | None],
        members: list[dict[str, Any]],
        key: str,
    ) -> Awaitable[None] | None:
        """A request's admission by its profile's rate (a token), then its body rendered (:meth:`_render_admitted`):
        None when both were done here (a token at once, a quick render), else what waits for them."""
        profile = shared.profile
        # The profile's limiter now, looked up again after each wait: an edited limit or a new fleet share
        # rebuilds it, and a token from the old one would go on top of the new one's.
        now = self.clock()
        limiter = self.fleet.rate_of(profile.name, limits)
        wait = limiter.reserve(now)
        if wait > 0:  # counted once an attempt, however many times it waits again for its token
            RATE_LIMIT_WAITS.labels(profile=profile.name).inc()
            body[0] = None  # a retry waits holding no body either: rendered again once admitted
            return self._wait_for_token(shared, limits, limiter, now, wait, body, members, key)
        return self._render_admitted(shared, limits, limiter, body, members, key)

    async def _wait_for_token(
        self,
        shared: _BatchRequests,
        limits: ProfileLimits,
        limiter: AdaptiveRateLimiter | LearnedRateLimit,
        now: float,
        wait: float,
        body: list[RenderedRequest | None],
        members: list[dict[str, Any]],
        key: str,
    ) -> None:
        """:meth:`_admit_rate` for a request promised a token in ``wait`` seconds by ``limiter`` (asked at ``now``)."""
        name = shared.profile.name
        while wait > 0:  # a promised token: taken once the request has a worker again, or waited for again
            if shared.ends is not None and now + wait >= shared.ends:
                limiter.give_back()  # its token is not spent: the next round's requests do not wait for it
                raise RoundOver(time.monotonic())
            RATE_LIMIT_WAIT_SECONDS.labels(profile=name).inc(wait)
            try:  # holding no worker: the other profiles' requests go on
                await self.workers.aside(self.sleep(wait))
            except BaseException:  # cancelled (its batch failed, the service stops): its promise is not spent
                self._give_back(name, limits, limiter)
                raise
            now = self.clock()
            if shared.ends is not None and now >= shared.ends:  # a worker came back past the round's end
                self._give_back(name, limits, limiter)
                raise RoundOver(time.monotonic())
            # The token is taken now, with the worker back: requests back together (their workers were busy
            # past their waits) are spaced again rather than sent together above the rate. From the limiter
            # now: rebuilt meanwhile, it holds the promise when it continues the old one, else it is asked anew.
            current = self.fleet.rate_of(name, limits)
            if current is limiter or holds_promises_of(current, limiter):
                wait = current.redeem(now)
            else:
                wait = current.reserve(now)
            limiter = current
        rendering = self._render_admitted(shared, limits, limiter, body, members, key)
        if rendering is not None:
            await rendering

    def _render_admitted(
        self,
        shared: _BatchRequests,
        limits: ProfileLimits,
        limiter: AdaptiveRateLimiter | LearnedRateLimit,
        body: list[RenderedRequest | None],
        members: list[dict[str, Any]],
        key: str,
    ) -> Awaitable[None] | None:
        """An admitted request's body in ``body[0]`` (the first attempt's, a retry's that waited for its token; a
        retry that did not keeps its body), and in ``body[1]`` too when rendered with this request's headers: None
        when rendered here (a quick render), else what awaits a render thread. A render that fails gives
        ``limiter``'s token back (nothing is sent) and fails the request."""
        if body[0] is not None:
            return None
        headers = None  # the template's; this request's own when the batch's requests share them
        if shared.headers is not None and not exporting():
            headers = shared.headers.copy()
            headers["Idempotency-Key"] = key
        try:  # a quick render: no coroutine
            rendered = self.renderer.render_inline(shared.prepared, members, headers)
            if rendered is not None:
                rendered = self._keyed(shared, rendered)
        except BaseException:  # nothing sent: its token back (its probe: _in_flight), the failure its own
            self._refund(shared.profile.name, limits, limiter)
            raise
        if rendered is None:
            return self._render_aside(shared, limits, limiter, body, members, headers)
        body[0] = rendered
        if headers is not None:
            body[1] = rendered
        return None

    async def _render_aside(
        self,
        shared: _BatchRequests,
        limits: ProfileLimits,
        limiter: AdaptiveRateLimiter | LearnedRateLimit,
        body: list[RenderedRequest | None],
        members: list[dict[str, Any]],
        headers: dict[str, str] | None,
    ) -> None:
        """:meth:`_render_admitted` on a render thread (a render expected to be slow)."""
        try:
            rendered = self._keyed(shared, await self.renderer.render(shared.prepared, members, headers))
            self._before_round_end(shared)  # a render thread's time may have outlasted the round
        except BaseException:  # nothing sent: its token back (its probe: _in_flight), the failure its own
            self._refund(shared.profile.name, limits, limiter)
            raise
        body[0] = rendered
        if headers is not None:
            body[1] = rendered

    @staticmethod
    def _keyed(shared: _BatchRequests, rendered: RenderedRequest) -> RenderedRequest:
        """``rendered`` with the profile's API key in its query when the profile sends it there (``in: query``): its
        secret resolved once a batch, as a header key is (:meth:`_credentials`; a failure is not kept: each request
        meets it)."""
        name = shared.query_key
        if name is None:
            return rendered
        field = shared.query_field
        if field is None:
            field = query_key_field(shared.profile)
            assert field is not None  # query_key is set for in: query profiles only
            shared.query_field = field
        url = with_query_field(rendered.url, name, field)
        return RenderedRequest(rendered.method, url, rendered.headers, rendered.content)

    def _request_done(self, shared: _BatchRequests, ticket: list[Admission | None] | None) -> None:
        """A request of :meth:`_request` awaited (however it ended): counted out of flight, and the breaker's
        admission of its attempt, never judged (cancelled), gives its probe slot back."""
        if ticket is not None:
            shared.in_flight.count -= 1
            self.breakers.cancel(shared.profile, ticket[0])

    def _request_with_credentials(
        self, shared: _BatchRequests, rendered: RenderedRequest, key: str
    ) -> Awaitable[RenderedRequest]:
        """:meth:`_merged_request` once the profile's credentials are read (a token fetched: a coroutine)."""

        async def merged() -> RenderedRequest:
            return self._merged_request(shared, rendered, key, await self._credentials(shared))

        return merged()

    def _merged_request(
        self, shared: _BatchRequests, rendered: RenderedRequest, key: str, credentials: dict[str, str]
    ) -> RenderedRequest:
        """The request of an attempt whose headers are merged: ``rendered``'s (the template's) with ``credentials``,
        its Idempotency-Key, a signature and the trace's headers; the batch's kept (:meth:`_keep_headers`) when its
        requests share them."""
        signature = {}
        if shared.profile.signing_secret is not None:
            signature = signature_headers(shared.profile.signing_secret, key, rendered.content, datetime.now(UTC))
        # The template cannot set these (refused when saved); a template saved before, or the profile's
        # API key header, is overridden whatever the case of its name. The run's traceparent comes last.
        # Without exported spans the current span is the batch's own (read once a batch); with them, the request's
        # (one span a request, its retries included).
        trace_headers = current_http_headers() if exporting() else shared.trace_headers
        headers = merged_headers(rendered.headers, credentials, {"Idempotency-Key": key}, signature, trace_headers)
        if shared.headers is None and self._shares_headers(shared):
            self._keep_headers(shared, rendered.headers, credentials)
        return RenderedRequest(rendered.method, rendered.url, headers, rendered.content)

    def _delivery(
        self,
        shared: _BatchRequests,
        make_request: Callable[[], Awaitable[RenderedRequest] | RenderedRequest],
        admit: Callable[[], Awaitable[None] | None],
        adapt: Callable[[AttemptResult], None],
    ) -> Awaitable[DeliveryResult]:
        """The deliverer's coroutine for one request of the batch (no coroutine of our own around it), its keywords
        passed as they are (a call with keywords builds no dict; a partial of them would, a request)."""
        profile = shared.profile
        return self.deliverer.deliver(
            make_request,
            profile.timeout_seconds,
            shared.template.success_statuses,
            on_attempt=adapt,
            labels=shared.labels,
            network=shared.network,
            inspect=shared.inspect,
            before_attempt=admit,
            secrets_of=profile,  # its secrets are masked in a failure's reason
            tally=shared.tally,
            aside=self.workers.aside,  # a retry's backoff holds no worker
        )

    @staticmethod
    def _shares_headers(shared: _BatchRequests) -> bool:
        """Whether every request of the batch carries the same headers but its Idempotency-Key: constant template
        headers, static credentials (no OAuth token), no signature (it signs the body), the batch's traceparent (no
        span a request)."""
        return (
            shared.prepared.constant_headers
            and shared.credentials is not None
            and shared.profile.signing_secret is None
            and not exporting()
        )

    @staticmethod
    def _keep_headers(shared: _BatchRequests, rendered: dict[str, str], credentials: dict[str, str]) -> None:
        """Keep the batch's headers (:attr:`_BatchRequests.headers`): merged as each request's are, its key's value
        a placeholder, so a copy with the key set is that request's merge, names, values and order alike."""
        placeholder = {"Idempotency-Key": _KEY_PLACEHOLDER}
        headers = merged_headers(rendered, credentials, placeholder, {}, shared.trace_headers)
        if headers.get("Idempotency-Key") == _KEY_PLACEHOLDER:  # last set by the placeholder: a copy's key replaces it
            shared.headers = headers

    def _give_back(self, name: str, limits: ProfileLimits, limiter: AdaptiveRateLimiter | LearnedRateLimit) -> None:
        """A promise ``limiter`` made to a request that is not sent: given back to the profile's limiter now, when it
        holds that promise (``limiter`` itself, or rebuilt from it)."""
        current = self.fleet.rate_of(name, limits)
        if holds_promises_of(current, limiter):
            current.give_back()

    def _refund(self, name: str, limits: ProfileLimits, limiter: AdaptiveRateLimiter | LearnedRateLimit) -> None:
        """A token ``limiter`` gave a request that is not sent (its body failed to render): back to the profile's
        limiter now, when it holds that token (``limiter`` itself, or rebuilt from it)."""
        current = self.fleet.rate_of(name, limits)
        if holds_promises_of(current, limiter):
            current.refund()

    def _round_left(self, ends: float) -> float:
        """Seconds left until a round's end ``ends``."""
        return ends - self.clock()

    def _before_round_end(self, shared: _BatchRequests) -> None:
        """Raise :class:`RoundOver` once the batch's round has ended: the batch is handed to the next round."""
        if shared.ends is not None and self.clock() >= shared.ends:
            raise RoundOver(time.monotonic())

    async def _credentials(self, shared: _BatchRequests) -> dict[str, str]:
        """The profile's authentication header, checked; kept for the batch's next requests unless it is an OAuth
        token (fetched anew when it expires, or after a 401). A failure is not kept: each request meets it."""
        credentials = await auth_headers(shared.profile, self.tokens)
        for name, value in credentials.items():
            if header_value_problem(value) is not None:  # never the value: it is a secret
                raise PermanentError(
                    f"the connection profile's credentials make an invalid {name} header (a line break, "
                    "control or non-ASCII character: a secret with a trailing newline?)"
                )
        if not shared.oauth:
            shared.credentials = credentials
        return credentials

    async def _in_flight(
        self,
        shared: _BatchRequests,
        method: str,
        delivered: Callable[[], Awaitable[DeliveryResult]],
        ticket: list[Admission | None],
    ) -> DeliveryResult:
        """``delivered()``, counted in flight, in a span of its own while spans are exported; the circuit breaker's
        admission left in ``ticket`` (admitted, never judged: cancelled) gives its probe slot back."""
        profile = shared.profile
        in_flight = shared.in_flight
        in_flight.count += 1
        try:
            if not exporting():  # a span per request only while spans are exported (README, Tracing)
                return await delivered()
            attributes = {"http.request.method": method, "member_export.profile": profile.name}
            with exported_span(method, SpanKind.CLIENT, attributes) as span:
                result = await delivered()
                record_http_result(span, result.status, result.success, result.attempts, result.error)
            return result
        finally:
            in_flight.count -= 1
            self.breakers.cancel(profile, ticket[0])  # admitted, never judged (cancelled): a probe slot back

    def _outcome(
        self, batch: MemberBatch, result: IsolationResult[DeliveryResult], profile: str | None, label: str
    ) -> list[Outgoing]:
        """The batch's outcome (and dead letters), its members counted under ``profile`` (None: none to count) and
        the definition ``label`` (:meth:`CatalogCache.definition_label`)."""
        count = len(batch.members)
        run_key = str(batch.run_id)
        failed = sum(refused.slice.size for refused in result.refused)
        last = result.refused[-1].outcome if result.refused else result.first
        error = None
        if result.refused:
            error = last.error if failed == count else f"{failed} of {count} members refused; last: {last.error}"
        keys = member_keys(batch)
        outcome = BatchOutcome(
            run_id=batch.run_id,
            definition=batch.definition,
            batch_index=batch.batch_index,
            delivered=result.delivered,
            failed=failed,
            status_code=last.status,
            error=error,
            attempts=max(result.requests, result.first.attempts),
            member_keys=keys,
            refused=refused_members(keys, result.refused),
            change=batch.change,
            retry=batch.retry,
        )
        if profile is not None:
            MEMBERS_DELIVERED.labels(label, profile).inc(result.delivered)
        outgoing = [Outgoing(self.topics.run_events, run_key, outcome.to_bytes())]
        if not result.refused:
            return outgoing
        MEMBERS_FAILED.labels(label, profile).inc(failed)
        letters = []
        for refused in result.refused:
            DEAD_LETTERS.labels(label).inc()
            log.warning(
                "members refused",
                run_id=run_key,
                batch_index=batch.batch_index,
                members=refused.slice.size,
                status=refused.outcome.status,
                attempts=refused.outcome.attempts,
                error=refused.outcome.error,
            )
            letter = DeadLetter(
                reason=refused.outcome.error or "delivery failed",
                source_topic=self.topics.member_batches_for(batch.priority.value),
                service="dispatcher",
                run_id=batch.run_id,
                definition=batch.definition,
                batch_index=batch.batch_index,
                members=batch.members[refused.slice.start : refused.slice.stop],
                last_status=refused.outcome.status,
                attempts=refused.outcome.attempts,
            )
            letters.append(Outgoing(self.topics.dead_letters, run_key, letter.to_bytes()))
        # Dead letters go first: the outcome tells the notifier the members are accounted for.
        return [*letters, *outgoing]
