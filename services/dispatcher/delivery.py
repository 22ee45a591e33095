"""Deliver one rendered request: retry what can succeed later, with backoff and Retry-After."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result

from services.dispatcher.metrics import INSPECTOR_DROPPED, RETRIES, RequestTally
from services.dispatcher.profile_masking import Maskings
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.rendering import RenderedRequest
from shared.errors import ExportError, RetryableError
from shared.outbound.backoff import Backoff
from shared.outbound.failure_reasons import REASON_CHARS, masked_reason
from shared.outbound.partner_http import NoAnswer, PartnerAnswer, PartnerHttp
from shared.outbound.partner_network import PartnerNetwork
from shared.outbound.retry_decisions import is_retryable, is_success, parse_retry_after

log = structlog.get_logger(__name__)

#: A failure's reason quotes at most this many characters of the partner's answer (after ``HTTP <status>: ``),
#: or of the reason no answer came: the bound every failure's reason has (the notifier's webhooks' too).
SNIPPET_CHARS = REASON_CHARS
#: A retry's turn given back within this after its backoff counts as given back at once (seconds: the reads of the
#: clock in between); a later one whose wait and turn end past the retry budget is not made (:meth:`Deliverer.deliver`).
TURN_SLACK_SECONDS = 0.001


@dataclass(frozen=True)
class AttemptResult:
    """One HTTP attempt: a status (with Retry-After and a body snippet), a transport error, or a request
    that could not be made (``final``: retrying would not help, e.g. a header value HTTP cannot carry).

    A failure's ``error`` as :class:`Deliverer` gives it is masked and bounded (:meth:`Deliverer.attempt`)."""

    status: int | None
    success: bool
    retry_after: float | None = None
    error: str | None = None
    final: bool = False

    @property
    def retryable(self) -> bool:
        return not self.success and not self.final and (self.status is None or is_retryable(self.status))


#: Hears an attempt that sent a request: its number (from 1, within the retries), the request, the answer
#: (None when none came), the attempt's result and the seconds it took.
AttemptWitness = Callable[[int, RenderedRequest, PartnerAnswer | None, AttemptResult, float], None]


def _judged(answer: PartnerAnswer, success_statuses: list[int] | None) -> AttemptResult:
    """An answer judged: a success, or a failure with its Retry-After (its reason, the start of the body, is
    written masked: :meth:`Deliverer.attempt`)."""
    status = answer.status
    if is_success(status, success_statuses):
        return _succeeded(status)
    return AttemptResult(status=status, success=False, retry_after=parse_retry_after(answer.retry_after, time.time()))


def failed_attempt(exc: Exception) -> AttemptResult:
    """An attempt that raised before any answer: retried if the error may pass (``RetryableError``, e.g. an
    OAuth token endpoint answering 503), final otherwise, with the whole reason either way (the deliverer
    masks and cuts it)."""
    if isinstance(exc, RetryableError):
        return AttemptResult(status=None, success=False, error=str(exc))
    if isinstance(exc, ExportError):  # e.g. a destination the SSRF guard refuses, an unresolvable secret
        return AttemptResult(status=None, success=False, error=str(exc), final=True)
    return AttemptResult(
        status=None, success=False, error=f"the request could not be sent: {type(exc).__name__}: {exc}", final=True
    )


@functools.lru_cache(maxsize=1024)
def _succeeded(status: int) -> AttemptResult:
    """A successful attempt's result: immutable, so one per status serves every request (a request's CPU)."""
    return AttemptResult(status=status, success=True)


@dataclass(frozen=True)
class DeliveryResult:
    """The final outcome of delivering one request, after retries."""

    success: bool
    status: int | None
    attempts: int
    error: str | None


@functools.lru_cache(maxsize=1024)
def _delivered_at_once(status: int | None) -> DeliveryResult:
    """A delivery that succeeded at its first attempt: immutable, so one per status serves every request."""
    return DeliveryResult(success=True, status=status, attempts=1, error=None)


@dataclass(frozen=True)
class RetryBudget:
    max_attempts: int = 6
    max_seconds: float = 120.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def wait(self, state: RetryCallState) -> float:
        """Full-jitter exponential backoff, or the server's Retry-After when it asks for longer (the notifier's
        webhook retries wait the same way: :class:`shared.outbound.backoff.Backoff`)."""
        outcome = state.outcome
        retry_after = outcome.result().retry_after if outcome is not None and not outcome.failed else None
        backoff = Backoff(self.initial_backoff, self.max_backoff, self.max_seconds)
        return backoff.delay(state.attempt_number, retry_after)


class Deliverer:
    """Sends rendered requests with ``partners``, retrying per ``policy``."""

    def __init__(
        self,
        partners: PartnerHttp,
        policy: RetryBudget,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partners = partners
        self.policy = policy
        self.sleep = sleep
        #: What the retry budget is measured with (seconds).
        self.clock = clock
        #: The maskings of failures' reasons, per profile and credentials sent (built by failures only).
        self.maskings = Maskings()

    async def attempt(
        self,
        request: RenderedRequest,
        timeout: float,
        success_statuses: list[int] | None,
        labels: tuple[str, str] = ("", ""),
        network: PartnerNetwork | None = None,
        witness: Callable[[RenderedRequest, PartnerAnswer | None, AttemptResult, float], None] | None = None,
        secrets_of: ConnectionProfile | None = None,
        tally: RequestTally | None = None,
        inspect: AttemptWitness | None = None,
        number: int = 1,
    ) -> AttemptResult:
        """Send once; never raises for HTTP or network failures, nor for a request that cannot be sent: it
        describes them. ``labels``: the definition and profile the metrics count it under; ``network``: the
        profile's TLS and proxy settings (None: the default session); ``witness`` hears the request, the
        answer (None when none came), the result and the seconds it took (the attempt inspector); ``tally``: where
        the attempt is counted (its batch's, flushed by the dispatcher: :class:`~.metrics.RequestTally`; None: a
        tally of ``labels`` flushed at once); ``inspect`` hears what ``witness`` does, after the attempt's
        ``number`` (:meth:`deliver`'s: no partial of the witness an attempt).

        A failure's reason (``HTTP <status>: `` and the start of the answer's body, or why no answer came) is
        masked (:meth:`shared.domain.masking.Masking.reason`: the secrets of ``secrets_of``, the credentials the
        request carried, credentials by their shape) and cut to :data:`SNIPPET_CHARS`; a success is not
        touched."""
        counted = tally if tally is not None else RequestTally(labels)
        started = time.perf_counter()
        answer: PartnerAnswer | None = None
        judged: AttemptResult | None = None
        try:
            answer = await self.partners.send(request, timeout, network)
        except NoAnswer as exc:
            judged = AttemptResult(status=None, success=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - an invalid URL or header, a refused destination: this batch's failure
            judged = failed_attempt(exc)
        except BaseException:  # cancelled: its duration is observed, no status counted
            counted.observe(time.perf_counter() - started)
            if tally is None:
                counted.flush()
            raise
        ended = time.perf_counter()
        seconds = ended - started
        try:
            if answer is not None:  # judging it may parse its Retry-After
                judged = _judged(answer, success_statuses)
        finally:  # the attempt is counted even when judging its answer raised
            counted.count(
                None if answer is None else answer.status, seconds, judged is not None and judged.success, ended
            )
            if tally is None:
                counted.flush()
        result: AttemptResult = judged  # type: ignore[assignment]  # set by one of the branches above
        if not result.success:  # only a failure has a reason: a success pays nothing for masking
            result = self._reasoned(result, answer, secrets_of, request.headers.items())
        if witness is not None or inspect is not None:
            try:
                if witness is not None:
                    witness(request, answer, result, seconds)
                if inspect is not None:
                    inspect(number, request, answer, result, seconds)
            except Exception as exc:  # noqa: BLE001 - the inspector never changes a delivery's outcome
                INSPECTOR_DROPPED.inc()
                log.warning("the attempt inspector failed on an attempt", error=type(exc).__name__)
        return result

    async def deliver(
        self,
        make_request: Callable[[], Awaitable[RenderedRequest] | RenderedRequest],
        timeout: float,
        success_statuses: list[int] | None = None,
        on_attempt: Callable[[AttemptResult], None] | None = None,
        labels: tuple[str, str] = ("", ""),
        network: PartnerNetwork | None = None,
        inspect: AttemptWitness | None = None,
        before_attempt: Callable[[], Awaitable[None] | None] | None = None,
        secrets_of: ConnectionProfile | None = None,
        tally: RequestTally | None = None,
        aside: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
    ) -> DeliveryResult:
        """Deliver with retries. ``make_request`` is called per attempt so headers (tokens) stay fresh;
        ``on_attempt`` hears each attempt's result (the rate limiter adapts to it); ``labels`` are the
        definition and profile the metrics count the attempts under; ``network`` the profile's TLS and proxy;
        ``inspect`` hears each attempt that sent a request, with its number (the attempt inspector);
        ``before_attempt`` is awaited before each attempt (the circuit breaker's admission): what it, or
        ``on_attempt``, raises ends the delivery (no retry); ``secrets_of``: the profile whose secrets are masked
        in a failure's reason (:meth:`attempt`); ``tally``: where the attempts are counted (:meth:`attempt`);
        ``aside`` awaits each backoff (the dispatcher's: the request holds no worker while it waits).

        The retry budget (``max_seconds``) is counted from the first attempt (once ``before_attempt`` admitted it),
        and no wait (backoff, a Retry-After) goes past its end: the last attempt begins within the budget, so a
        delivery takes at most the budget and one attempt (the profile's timeout) after its first admission. A retry
        whose backoff ended within the budget and whose ``aside`` gave it back only past the budget's end is not
        made (the last answer stands): the backoff counted as ending when it was due (a sleep's own lateness aside), the
        wait for its turn after it counted.

        ``make_request`` may return the request itself rather than an awaitable of it, and ``before_attempt`` None
        rather than an awaitable, when they have nothing to wait for (the dispatcher's common request: no coroutine
        of theirs to pay for); the first attempt is made here, without a coroutine of its own."""

        if before_attempt is not None:
            admitting = before_attempt()
            if admitting is not None:
                await admitting
        first_sent = self.clock()  # when the first attempt was admitted: the budget's clock starts there
        # Most requests succeed (or fail for good) at once: only a retryable first answer enters tenacity,
        # which is handed that answer as its first attempt (numbering and backoff stay tenacity's). The first attempt
        # is made here, without a coroutine of its own (a retry's is once()).
        try:
            request = make_request()
            if not isinstance(request, RenderedRequest):
                request = await request
        except Exception as exc:  # noqa: BLE001 - e.g. a token endpoint's failure: this attempt's failure
            first = self._reasoned(failed_attempt(exc), None, secrets_of, ())
        else:
            first = await self.attempt(
                request, timeout, success_statuses, labels, network, None, secrets_of, tally, inspect, 1
            )
        if on_attempt is not None:
            on_attempt(first)
        if not first.retryable:
            if first.success:
                return _delivered_at_once(first.status)
            return DeliveryResult(success=first.success, status=first.status, attempts=1, error=first.error)
        return await self._retried(
            first,
            first_sent,
            make_request,
            timeout,
            success_statuses,
            on_attempt,
            labels,
            network,
            inspect,
            before_attempt,
            secrets_of,
            tally,
            aside,
        )

    async def _retried(
        self,
        first: AttemptResult,
        first_sent: float,
        make_request: Callable[[], Awaitable[RenderedRequest] | RenderedRequest],
        timeout: float,
        success_statuses: list[int] | None,
        on_attempt: Callable[[AttemptResult], None] | None,
        labels: tuple[str, str],
        network: PartnerNetwork | None,
        inspect: AttemptWitness | None,
        before_attempt: Callable[[], Awaitable[None] | None] | None,
        secrets_of: ConnectionProfile | None,
        tally: RequestTally | None,
        aside: Callable[[Awaitable[None]], Awaitable[None]] | None,
    ) -> DeliveryResult:
        """:meth:`deliver`'s retries after a retryable ``first`` attempt, admitted at ``first_sent`` (a method of its
        own: the closures below would otherwise make a cell of each of deliver's arguments, every request)."""
        attempts = 1

        async def once() -> AttemptResult:  # a retry: what the first attempt was, in a coroutine of its own
            nonlocal attempts
            if before_attempt is not None:
                admitting = before_attempt()
                if admitting is not None:
                    await admitting
            attempts += 1
            try:
                request = make_request()
                if not isinstance(request, RenderedRequest):
                    request = await request
            except Exception as exc:  # noqa: BLE001 - e.g. a token endpoint's failure: this attempt's failure
                result = self._reasoned(failed_attempt(exc), None, secrets_of, ())
            else:
                result = await self.attempt(
                    request, timeout, success_statuses, labels, network, None, secrets_of, tally, inspect, attempts
                )
            if on_attempt is not None:
                on_attempt(result)
            return result

        handed_over = [first]
        last = [first]
        #: When the last backoff was due to end, and when it did (before ``aside`` gave the request back).
        due, slept = [0.0], [0.0]

        async def first_then_again() -> AttemptResult:
            if handed_over:
                return handed_over.pop()
            # Late: the backoff's due end (within the budget: waits are cut to it) and the wait for the turn after it
            # (less a slack for the clock's reads), the sleep's own lateness not counted (a timer's millisecond does
            # not skip a retry whose wait was cut to the budget's end).
            turn = self.clock() - slept[0] - TURN_SLACK_SECONDS
            if aside is not None and due[0] + turn > first_sent + self.policy.max_seconds:
                return last[0]  # given back past the budget's end: no attempt (tenacity stops on the budget)
            last[0] = await once()
            return last[0]

        def before_sleep(state: RetryCallState) -> None:
            RETRIES.labels(*labels).inc()

        def budget_left() -> float:
            return first_sent + self.policy.max_seconds - self.clock()

        def stop(state: RetryCallState) -> bool:  # the budget is counted from the first attempt, not tenacity's start
            return state.attempt_number >= self.policy.max_attempts or budget_left() <= 0

        def wait(state: RetryCallState) -> float:  # never past the budget's end (a Retry-After of an hour neither)
            return max(0.0, min(self.policy.wait(state), budget_left()))

        async def backoff(seconds: float) -> None:
            due[0] = min(self.clock() + seconds, first_sent + self.policy.max_seconds)
            await self.sleep(seconds)
            slept[0] = self.clock()

        def sleep_aside(seconds: float) -> Awaitable[None]:
            assert aside is not None
            return aside(backoff(seconds))

        retrying = AsyncRetrying(
            retry=retry_if_result(lambda result: result.retryable),
            stop=stop,
            wait=wait,
            sleep=self.sleep if aside is None else sleep_aside,
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        result: AttemptResult = await retrying(first_then_again)
        return DeliveryResult(success=result.success, status=result.status, attempts=attempts, error=result.error)

    def _reasoned(
        self,
        result: AttemptResult,
        answer: PartnerAnswer | None,
        profile: ConnectionProfile | None,
        headers: Iterable[tuple[str, str]],
    ) -> AttemptResult:
        """``result`` (a failure) with its reason masked and cut: the answer's start, or its own whole reason."""
        error = masked_reason(lambda: self.maskings.of(profile, headers), answer, result.error, SNIPPET_CHARS)
        return replace(result, error=error)
