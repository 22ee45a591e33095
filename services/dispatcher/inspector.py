"""The attempt inspector: the last HTTP attempts per (definition, profile), kept in the catalog, masked.

The deliverer's retry loop hands each attempt that sent a request to :meth:`AttemptInspector.watch`'s
witness. On the event loop (the hot path) it only decides whether to keep the attempt (sampling first:
an attempt not kept is never copied) and, if so, keeps references and bounded slices of the bodies in a
bounded buffer: at most ``keep`` attempts per (definition, profile), the newest, and ``max_buffered`` in
all (the rest are dropped and counted). A background thread drains the buffer every ``flush_seconds``:
it masks (:class:`shared.domain.attempts.Masking`, with the profile's secrets resolved there, off the
loop), writes the round's attempts in one statement, forgets each pair's rows beyond the newest
``keep`` in the same transaction, and applies the retention about once a minute.

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
from services.dispatcher.settings import DispatcherSettings
from shared.domain.attempts import CapturedAttempt, Masking, profile_secrets, window
from shared.domain.catalog_objects import ApiKeyAuth, ConnectionProfile
from shared.domain.rendering import RenderedRequest
from shared.domain.secret_references import resolve_secret
from shared.errors import ExportError
from shared.outbound.partner_http import PartnerAnswer

log = structlog.get_logger(__name__)

Pair = tuple[str, str]


class AttemptsWriter(Protocol):
    """Where captured attempts go (the catalog's attempts store)."""

    def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int: ...
    def prune(self, before: datetime) -> int: ...


@dataclass(frozen=True, slots=True)
class _Raw:
    """An attempt kept on the hot path: references and bounded slices, nothing masked or decoded yet."""

    definition: str
    profile: ConnectionProfile
    run_id: uuid.UUID
    batch_index: int
    attempt: int
    at: float
    request: RenderedRequest
    body: bytes
    answer: PartnerAnswer | None
    answer_body: bytes
    result: AttemptResult
    seconds: float


class AttemptInspector:
    """Captures sampled attempts in memory and writes them to ``store`` in the background (see the module)."""

    #: How often the retention is applied (seconds): an indexed delete, not worth doing every flush.
    PRUNE_EVERY_SECONDS = 60.0

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
        self._pending: dict[Pair, deque[_Raw]] = {}
        self._buffered = 0
        #: Pairs whose first success of this flush interval was kept.
        self._succeeded: set[Pair] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = float("-inf")

    # --- the hot path (the dispatcher's event loop) -----------------------------------------------------

    def watch(self, definition: str, profile: ConnectionProfile, run_id: uuid.UUID, batch_index: int) -> AttemptWitness:
        """The witness of one request's attempts (``Deliverer.deliver(inspect=...)``)."""
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
                request,
                request.content[:size],
                answer,
                answer.body[:size] if answer is not None else b"",
                result,
                seconds,
            )
            self._buffer(pair, raw)

        return witness

    def _keeps(self, pair: Pair, success: bool) -> bool:
        if not success:
            return self.failure_sample >= 1.0 or self._chance() < self.failure_sample
        if pair not in self._succeeded:
            self._succeeded.add(pair)
            return True
        return self.success_sample > 0 and self._chance() < self.success_sample

    def _buffer(self, pair: Pair, raw: _Raw) -> None:
        with self._lock:
            attempts = self._pending.get(pair)
            if attempts is not None and len(attempts) == self.keep:
                attempts.append(raw)  # the pair's oldest makes room: the store keeps the newest anyway
                return
            if self._buffered >= self.max_buffered:
                INSPECTOR_DROPPED.inc()
                return
            if attempts is None:
                attempts = self._pending[pair] = deque(maxlen=self.keep)
            attempts.append(raw)
            self._buffered += 1

    # --- the background flush ----------------------------------------------------------------------------

    def start(self) -> None:
        """Flush every ``flush_seconds`` on a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="attempt-inspector", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread, and write what is still buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def flush(self) -> int:
        """Write the buffered attempts (masked) and prune; how many were written. Never raises: a catalog that
        cannot be written loses this round's attempts (counted), not the dispatcher."""
        with self._lock:
            pending, self._pending, self._buffered = self._pending, {}, 0
            self._succeeded = set()
        raws = [raw for attempts in pending.values() for raw in attempts]
        try:
            written = 0
            if raws:
                self.store.add(self._masked(raws), keep=self.keep)
                written = len(raws)
            if time.monotonic() - self._pruned_at >= self.PRUNE_EVERY_SECONDS:
                self.store.prune(datetime.now(UTC) - self.retention)
                self._pruned_at = time.monotonic()
            return written
        except Exception as exc:  # noqa: BLE001 - never the dispatcher's failure; never the message (it may quote rows)
            INSPECTOR_DROPPED.inc(len(raws))
            log.warning("captured attempts could not be written", error=type(exc).__name__, attempts=len(raws))
            return 0

    def _masked(self, raws: list[_Raw]) -> list[CapturedAttempt]:
        maskings: dict[int, Masking] = {}
        captured = []
        for raw in raws:
            masking = maskings.get(id(raw.profile))
            if masking is None:
                masking = maskings[id(raw.profile)] = masking_of(raw.profile)
            captured.append(self._captured(raw, masking))
        return captured

    def _captured(self, raw: _Raw, masking: Masking) -> CapturedAttempt:
        answer, result, request = raw.answer, raw.result, raw.request
        headers: Mapping[str, str] = answer.headers if answer is not None else {}
        return CapturedAttempt(
            definition=raw.definition,
            profile=raw.profile.name,
            run_id=raw.run_id,
            batch_index=raw.batch_index,
            attempt=raw.attempt,
            at=datetime.fromtimestamp(raw.at, UTC),
            method=request.method,
            url=masking.url(request.url),
            request_headers=masking.header_pairs(request.headers.items()),
            request_body=masking.body(raw.body, self.body_bytes, len(request.content)),
            request_bytes=len(request.content),
            status=result.status,
            success=result.success,
            latency_ms=round(raw.seconds * 1000, 3),
            response_headers=masking.header_pairs(headers.items()),
            response_body=masking.body(raw.answer_body, self.body_bytes, len(answer.body)) if answer else "",
            error=masking.reason(result.error) if result.error and answer is None else None,
        )


def masking_of(profile: ConnectionProfile) -> Masking:
    """The masking of ``profile``'s attempts: its secrets resolved (one that does not resolve was not sent
    either), and its API-key header."""
    values = []
    for secret in profile_secrets(profile):
        try:
            values.append(resolve_secret(secret))
        except ExportError:
            continue
    headers = [profile.auth.header] if isinstance(profile.auth, ApiKeyAuth) else []
    return Masking.of(values, headers)


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
