"""The attempt inspector: the last HTTP attempts per (definition, profile), kept in the catalog, masked.

The deliverer's retry loop hands each attempt that sent a request to :meth:`AttemptInspector.watch`'s
witness. On the event loop (the hot path) it only decides whether to keep the attempt (sampling first:
an attempt not kept is never copied) and, if so, keeps what will be shown of it (method, URL, headers, the
bodies' sizes and bounded slices: never the request or the answer themselves) in a bounded buffer: at most
``keep`` failed and ``keep`` successful attempts per (definition, profile), the newest, and ``max_buffered``
in all, of which successes may take half (so a stream of successes never crowds failures out; the rest are
dropped and counted). A background thread drains the buffer every ``flush_seconds``: it masks
(:class:`shared.domain.masking.Masking`, with the profile's secrets resolved there, off the loop, and the
credentials each request was sent with: :mod:`.profile_masking`), writes the round's attempts in one statement,
forgets each
(definition, profile, outcome)'s rows beyond the newest ``keep`` in the same transaction, and applies the
retention about once a minute.

Sampling: every failed attempt (``failure_sample``, 1.0 by default), the first successful attempt of each
(definition, profile) in each flush interval, and a share ``success_sample`` of the other successes.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from services.dispatcher.delivery import AttemptResult, AttemptWitness
from services.dispatcher.metrics import INSPECTOR_DROPPED
from services.dispatcher.profile_masking import Maskings
from services.dispatcher.settings import DispatcherSettings
from shared.domain.attempts import CapturedAttempt
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.masking import Masking, window
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import PartnerAnswer

log = structlog.get_logger(__name__)

Pair = tuple[str, str]
#: A pair and whether the attempts succeeded: failures and successes are capped apart.
Slot = tuple[str, str, bool]


class AttemptsWriter(Protocol):
    """Where captured attempts go (the catalog's attempts store)."""

    def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int: ...
    def prune(self, before: datetime) -> int: ...


@dataclass(frozen=True, slots=True)
class _Raw:
    """An attempt kept on the hot path: what will be shown of it, bodies as bounded slices, nothing masked yet.

    Never the :class:`RenderedRequest` or :class:`PartnerAnswer` themselves: their whole bodies would stay
    in memory until the flush. ``headers`` is the mapping the request was sent with (built per request)."""

    definition: str
    profile: ConnectionProfile
    run_id: uuid.UUID
    batch_index: int
    attempt: int
    at: float
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    body_bytes: int
    status: int | None
    success: bool
    #: The deliverer's reason, masked and bounded already (:meth:`Deliverer.attempt`).
    error: str | None
    answer_headers: Mapping[str, str] | None
    answer_body: bytes
    answer_bytes: int
    seconds: float


class AttemptInspector:
    """Captures sampled attempts in memory and writes them to ``store`` in the background (see the module)."""

    #: How often the retention is applied (seconds): an indexed delete, not worth doing every flush.
    PRUNE_EVERY_SECONDS = 60.0
    #: How long :meth:`close` waits for the last write, at most (seconds): a slow catalog must not hold the
    #: process past its termination grace period (Kubernetes: 30 s by default, shared with the rest of the
    #: shutdown).
    CLOSE_SECONDS = 5.0

    def __init__(
        self,
        store: AttemptsWriter,
        *,
        keep: int = 50,
        success_sample: float = 0.01,
        failure_sample: float = 1.0,
        body_bytes: int = 4096,
        retention: timedelta = timedelta(hours=72),
        flush_seconds: float = 2.0,
        max_buffered: int = 2000,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.keep, self.body_bytes, self.retention = keep, body_bytes, retention
        self.success_sample, self.failure_sample = success_sample, failure_sample
        self.flush_seconds, self.max_buffered = flush_seconds, max_buffered
        self._chance = chance
        self._window = window(body_bytes)
        self._lock = threading.Lock()
        self._pending: dict[Slot, deque[_Raw]] = {}
        #: Attempts buffered, by success: successes may fill half the buffer, failures all of it.
        self._buffered = {False: 0, True: 0}
        #: Pairs whose first success of this flush interval was kept.
        self._succeeded: set[Pair] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = float("-inf")

    # --- the hot path (the dispatcher's event loop) -----------------------------------------------------

    def watch(self, definition: str, profile: ConnectionProfile, run_id: uuid.UUID, batch_index: int) -> AttemptWitness:
        """The witness of one request's attempts (``Deliverer.deliver(inspect=...)``), kept under ``definition``: the
        name the dispatcher counts the batch's series under (:meth:`~.dispatching.CatalogCache.definition_label`:
        :data:`~shared.metrics.UNKNOWN_DEFINITION` for a name the catalog does not have), never one no one saved."""
        pair = (definition, profile.name)

        def witness(
            attempt: int,
            request: RenderedRequest,
            answer: PartnerAnswer | None,
            result: AttemptResult,
            seconds: float,
        ) -> None:
            if not self._keeps(pair, result.success):
                return  # decided before anything is copied
            size = self._window
            raw = _Raw(
                definition,
                profile,
                run_id,
                batch_index,
                attempt,
                time.time(),
                request.method,
                request.url,
                request.headers,
                request.content[:size],
                len(request.content),
                result.status,
                result.success,
                result.error,
                answer.headers if answer is not None else None,
                answer.body[:size] if answer is not None else b"",
                len(answer.body) if answer is not None else 0,
                seconds,
            )
            self._buffer((definition, profile.name, result.success), raw)

        return witness

    def _keeps(self, pair: Pair, success: bool) -> bool:
        if not success:
            return self.failure_sample >= 1.0 or self._chance() < self.failure_sample
        if pair not in self._succeeded:
            self._succeeded.add(pair)
            return True
        return self.success_sample > 0 and self._chance() < self.success_sample

    def _buffer(self, slot: Slot, raw: _Raw) -> None:
        success = slot[2]
        with self._lock:
            attempts = self._pending.get(slot)
            if attempts is not None and len(attempts) == self.keep:
                attempts.append(raw)  # the slot's oldest makes room: the store keeps the newest anyway
                return
            room = self.max_buffered // 2 if success else self.max_buffered - self._buffered[True]
            if self._buffered[success] >= room:
                INSPECTOR_DROPPED.inc()
                return
            if attempts is None:
                attempts = self._pending[slot] = deque(maxlen=self.keep)
            attempts.append(raw)
            self._buffered[success] += 1

    # --- the background flush ----------------------------------------------------------------------------

    def start(self) -> None:
        """Flush every ``flush_seconds`` on a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="attempt-inspector", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the background thread after it wrote what is still buffered, waiting ``timeout`` seconds at most
        (:attr:`CLOSE_SECONDS` by default): past it the process may end, the last attempts unwritten."""
        self._stop.set()
        thread = self._thread
        if thread is None:  # never started: the last write on a thread of its own, to bound it the same way
            thread = threading.Thread(target=self.flush, name="attempt-inspector-close", daemon=True)
            thread.start()
        thread.join(self.CLOSE_SECONDS if timeout is None else timeout)
        if thread.is_alive():
            log.warning("the attempt inspector's last write did not finish in time; its attempts are lost")

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()
        self.flush()  # the last write, on this thread: close() bounds its wait

    def flush(self) -> int:
        """Write the buffered attempts (masked) and prune; how many were written. Never raises: a catalog that
        cannot be written loses this round's attempts (counted), not the dispatcher."""
        with self._lock:
            pending, self._pending, self._buffered = self._pending, {}, {False: 0, True: 0}
            self._succeeded = set()
        raws = [raw for attempts in pending.values() for raw in attempts]
        written = 0
        if raws:
            try:
                self.store.add(self._masked(raws), keep=self.keep)
                written = len(raws)
            except Exception as exc:  # noqa: BLE001 - never the dispatcher's failure; never the message (it may quote rows)
                INSPECTOR_DROPPED.inc(len(raws))
                log.warning("captured attempts could not be written", error=type(exc).__name__, attempts=len(raws))
        if time.monotonic() - self._pruned_at >= self.PRUNE_EVERY_SECONDS:
            # Apart from the write: the attempts written above are kept even when the retention fails.
            try:
                self.store.prune(datetime.now(UTC) - self.retention)
                self._pruned_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - as above
                log.warning("the attempts retention could not be applied", error=type(exc).__name__)
        return written

    def _masked(self, raws: list[_Raw]) -> list[CapturedAttempt]:
        # A cache per flush: the profiles' secrets resolved as they are now, plus the credentials each request
        # was sent with (an OAuth token fetched at run time, a secret read from a file since rotated...).
        maskings = Maskings()
        return [self._captured(raw, maskings.of(raw.profile, raw.headers.items())) for raw in raws]

    def _captured(self, raw: _Raw, masking: Masking) -> CapturedAttempt:
        answered = raw.answer_headers is not None
        error = None
        if raw.error and not answered:  # masked again: changes nothing, unless a secret was rotated meanwhile
            error = masking.reason(raw.error)
        return CapturedAttempt(
            definition=raw.definition,
            profile=raw.profile.name,
            run_id=raw.run_id,
            batch_index=raw.batch_index,
            attempt=raw.attempt,
            at=datetime.fromtimestamp(raw.at, UTC),
            method=raw.method,
            url=masking.url(raw.url),
            request_headers=masking.header_pairs(raw.headers.items()),
            request_body=masking.body(raw.body, self.body_bytes, raw.body_bytes),
            request_bytes=raw.body_bytes,
            status=raw.status,
            success=raw.success,
            latency_ms=round(raw.seconds * 1000, 3),
            response_headers=masking.header_pairs((raw.answer_headers or {}).items()),
            response_body=self._answer_body(raw, masking) if answered else "",
            error=error,
        )

    def _answer_body(self, raw: _Raw, masking: Masking) -> str:
        # Credentials masked by their shape too: what a partner wrote may quote one no one told us about.
        return masking.body(raw.answer_body, self.body_bytes, raw.answer_bytes, shapes=True)


class AttemptsPurge:
    """The inspector switched off (``EXPORT_INSPECTOR_ENABLED=false``): no attempt is kept, so those recorded before
    this replica started (member data in their bodies, still listed by ``exportctl attempts`` and the API) are
    deleted, and those older than the retention, at start and every :attr:`AttemptInspector.PRUNE_EVERY_SECONDS`
    after, on a background thread: an indexed delete, nothing on the event loop.

    Never an attempt captured after this replica started: during a rolling change that turns the inspector on,
    the replicas still off must not delete what the new ones record (before, they deleted every attempt each
    minute until they were replaced). The turns after the first catch attempts captured before the start but
    written after it (an old replica's last flush, during a change that turns it off); what old replicas capture
    after the last new one started goes with the retention, as it would have with the inspector on."""

    def __init__(
        self,
        store: AttemptsWriter,
        *,
        retention: timedelta,
        every_seconds: float = AttemptInspector.PRUNE_EVERY_SECONDS,
        started: datetime | None = None,
    ) -> None:
        self.store, self.retention, self.every_seconds = store, retention, every_seconds
        #: Attempts captured before this are deleted (the replica's start).
        self.started = started if started is not None else datetime.now(UTC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="attempts-purge", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting for a delete in progress :attr:`AttemptInspector.CLOSE_SECONDS` at most."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(AttemptInspector.CLOSE_SECONDS if timeout is None else timeout)

    def _run(self) -> None:
        self.purge()
        while not self._stop.wait(self.every_seconds):
            self.purge()

    def purge(self) -> int:
        """Delete the attempts captured before this replica started or before the retention; how many went. Never
        raises (the next turn tries again)."""
        try:
            return self.store.prune(max(self.started, datetime.now(UTC) - self.retention))
        except Exception as exc:  # noqa: BLE001 - never the dispatcher's failure; never the message (it may quote rows)
            log.warning("recorded attempts could not be deleted (the inspector is off)", error=type(exc).__name__)
            return 0


def attempts_upkeep(
    settings: DispatcherSettings, inspector: AttemptInspector | None, store: AttemptsWriter
) -> AttemptInspector | AttemptsPurge:
    """What keeps the catalog's attempts as the settings say, to start with the dispatcher and close at its end: the
    inspector (its retention, ``EXPORT_INSPECTOR_RETENTION_HOURS``), or with it off the purge of the attempts
    captured before this replica started (and of those older than the retention)."""
    if inspector is not None:
        return inspector
    return AttemptsPurge(store, retention=timedelta(hours=settings.inspector_retention_hours))


def inspector_of(settings: DispatcherSettings, store: AttemptsWriter) -> AttemptInspector | None:
    """The inspector the settings describe, writing to ``store`` (None when ``inspector_enabled`` is off)."""
    if not settings.inspector_enabled:
        return None
    return AttemptInspector(
        store,
        keep=settings.inspector_keep,
        success_sample=settings.inspector_success_sample,
        failure_sample=settings.inspector_failure_sample,
        body_bytes=settings.inspector_body_bytes,
        retention=timedelta(hours=settings.inspector_retention_hours),
        flush_seconds=settings.inspector_flush_seconds,
        max_buffered=settings.inspector_buffer_attempts,
    )
