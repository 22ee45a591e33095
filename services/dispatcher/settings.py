"""The dispatcher's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.dispatcher.event_loop import EventLoopName
from services.dispatcher.round_admission import admitted_requests
from shared.domain.catalog_objects import PROFILE_TIMEOUT_MAX_SECONDS
from shared.domain.rendering import RenderLimits
from shared.settings import CommonSettings

#: What a round's end leaves of the poll interval beyond the longest attempt: an OAuth token's fetch, the render of a
#: request, producing and committing the round's outcomes.
ROUND_END_MARGIN_SECONDS = 60.0


class DispatcherSettings(CommonSettings):
    """Settings of the dispatcher service."""

    # 10 attempts: with the backoff doubling from 0.5 s to its 30 s cap they span about the 120 s time budget,
    # so a partner failing for a while exhausts the time budget, not the count (6 spanned ~8 s on average,
    # and a third of connections cut for 15 s dead-lettered a batch in the chaos suite).
    dispatcher_max_attempts: int = Field(default=10, ge=1, description="HTTP attempts per batch, first included.")
    dispatcher_max_retry_seconds: float = Field(
        default=120.0, gt=0, description="Time budget of one batch's retries, in seconds."
    )
    dispatcher_backoff_initial_seconds: float = Field(
        default=0.5, gt=0, description="First retry delay (before jitter)."
    )
    dispatcher_backoff_max_seconds: float = Field(default=30.0, gt=0, description="Cap of one retry delay.")
    dispatcher_catalog_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long templates and profiles are cached; edits apply after it."
    )
    dispatcher_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Batches being delivered at once (their requests share one asyncio loop).",
    )
    dispatcher_poll_records: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Batches (records) taken per poll at most: their requests delivered `concurrency` at a time "
        "(memory holds at most this many batches per round in flight).",
    )
    # 2 (1 before): bench_e2e on 2 cores, 1 and 2 alternating in one sitting (2026-12-06, session 49). Batch of 500,
    # a partner answering in 20 ms: 1M members 10.2-10.5 s against 12.1-13.7 s, 3M 25.9 s against 32.3 s (0.91-0.98x
    # the raw aiohttp script against 0.69-0.79x); answering at once, 1M 6.8-6.9 s against 7.0-7.5 s. One-member runs
    # of several rounds (30,000 members, at once) 8.3-8.6 s against 8.4-10.1 s. A one-member run that fits one round
    # (<= 4,096 requests) was 7-16% slower with 2 until session 50 (the loop thread polled every 10 ms while the round
    # was in flight); it now waits for the round (3,000 members at once: 1.63-1.84 s against 1.89-2.04 s before).
    # The dispatcher's peak RSS: 228-232 MB (1M) and 237-239 MB (3M), against 201-203 MB.
    dispatcher_rounds_in_flight: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Polls' rounds delivered at once: with 2 or more (2, the default), the next poll is decoded, and "
        "the last round's outcomes produced and committed, while a round's requests are in flight (1: each round's "
        "outcomes committed before the next poll). Offsets are committed in order whatever the setting; memory holds "
        "up to this many polls' batches, and the poll interval grows by the same factor.",
    )
    # uvloop: in process (bench_dispatcher_cpu --loops asyncio uvloop, 2026-12-04, 4 turns each) the dispatcher's CPU a
    # one-member request fell from 154-161 to 143-149 us, and a plain aiohttp loop's from 83-87 to 72-76 us.
    dispatcher_event_loop: EventLoopName = Field(
        default="uvloop",
        description="The event loop the dispatcher's requests run on: uvloop (libuv's, the default) or asyncio's own "
        "(a fallback, should uvloop misbehave with a partner's TLS or proxy).",
    )
    # aiohttp by default: reqwest's gain end to end was +12% one-member requests/s (the dispatcher's CPU -13%) on a busy
    # machine but +4% (CPU -4%) on a quiet one (2026-12-05, README, Performance, session 36), and a review found
    # availability differences of a new stack (README, the setting's row): opt in where the dispatcher's CPU is the
    # limit.
    dispatcher_http_client: Literal["reqwest", "aiohttp"] = Field(
        default="aiohttp",
        description="The HTTP client of partner requests: reqwest (Rust's, through pyreqwest; for profiles without "
        "tls or proxy settings, on a plain host name or IP literal) or aiohttp (every request, as before). Both "
        "pass the same SSRF guard; the other requests and OAuth token requests always go through aiohttp.",
    )
    # 4,096: one-member requests/s end to end +4-6% against 1,024 (2026-12-04, 60,000 members, two turns each, load
    # 1.8-3; the receiver's pauses between rounds 1.3-1.4 s -> 0.5-0.6 s a run); with 64-request records a poll then
    # takes the 64 records `poll_records` allows, as a batch template's rounds do.
    # 1,024 before: one-member requests/s end to end +14% against the former rounds of 256 (2026-12-04, three turns
    # each; +11% and +26% against 256 with the round admission in two more sittings; the notifier's and broker's CPU
    # less than halved): a round's poll, produce, flush and commit are paid per round. 256 had measured 2,254
    # against 1,351 with 64. A round's time no longer grows with it: the round's admission bounds it
    # (round_seconds, below), so the poll interval does not either.
    dispatcher_round_requests: int = Field(
        default=4096,
        ge=1,
        le=100_000,
        description="Requests one poll's records should hold at most: fewer records are polled when each carries "
        "several requests (a one-member template's records). A round's time does not depend on it (see "
        "`round_seconds`): it sizes the rounds, whose poll, outcomes and commit are paid once per round.",
    )
    dispatcher_round_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How long a round goes on beginning its batches (in order, while the requests begun and not "
        "finished stay within 16 times `concurrency`, 128 at least): the batches not begun by then are handed "
        "back uncommitted and begun in the next round (never dead-lettered, never sent twice); those begun finish. "
        "The poll interval is this plus 16 waves of the retry budget per round in flight (see max_poll_interval_ms).",
    )

    @property
    def max_poll_interval_ms(self) -> int:
        """Long enough for a round to begin batches for ``round_seconds``, then for the requests begun by then
        (those of the rounds in flight) all to spend their retry budget, wave after wave.

        A round begins its batches in order while its requests begun and not finished stay within
        :func:`~services.dispatcher.round_admission.admitted_requests` (16 waves of ``concurrency``, 128 requests
        at least), and none after ``round_seconds``: the rest go to the next round. So at its deadline a round has
        at most that many requests to finish, whatever its size; with rounds in flight, each may have as many (the
        oldest may wait behind the others' requests). Worst case: ``round_seconds`` + waves x (retry budget +
        a minute for the last attempt's timeout), with a 1.5 margin; with the defaults (2 rounds in flight) 10 s +
        32 x 180 s x 1.5 = 2.4 h, with one round in flight 16 waves: 72 min. A record of more requests than the
        bound (``EXPORT_EXTRACTOR_RECORD_MEMBERS`` above it with a one-member template) is begun alone and may
        take longer; so may a batch's isolating splits (``split_budget``), not counted.

        A request's retry budget is counted from its first attempt and no wait goes past it, so a request takes at
        most the budget and one attempt; the minute above stands for that attempt's timeout, which a profile may
        set up to 300 s, and a ``max_in_flight`` of 1 or a slow rate makes a round's requests go one at a time, not
        in waves. Whatever they do, a round ends within this interval: past :attr:`round_end_seconds` no attempt
        begins, and the batches of the requests not sent are handed to the next round.

        A consumer that does not poll within it leaves its group (its partitions move, batches are sent twice),
        so it follows the settings instead of failing them: at least the usual 10 minutes.
        """
        requests = admitted_requests(self.dispatcher_concurrency) * self.dispatcher_rounds_in_flight
        waves = -(-requests // self.dispatcher_concurrency)
        worst = self.dispatcher_round_seconds + waves * (self.dispatcher_max_retry_seconds + 60) * 1.5
        return max(600_000, int(worst * 1000))

    @property
    def round_end_seconds(self) -> float:
        """How long after its start a round may begin an attempt: the poll interval less the longest attempt a
        profile allows (its ``timeout_seconds``, 300 s at most) and a minute's margin (a token's fetch, rendering,
        the round's outcomes produced and committed). The requests not sent by then (waiting for a worker, a
        profile's ``max_in_flight`` slot or rate, or to retry) are not sent, and their batches handed to the next
        round uncommitted (never dead-lettered; those of their requests sent already may be sent again, same
        Idempotency-Key), so a round ends within the poll interval whatever its partners and profiles do (a
        partner that hangs to a 300 s timeout, a ``max_in_flight`` of 1 serialising the round's requests). With the
        defaults (2 rounds in flight) 8,650 s - 300 s - 60 s = 8,290 s (3,970 s with one round in flight); at least
        240 s, and never below ``round_seconds`` + 16 retry budgets: a round's first requests always have time to
        finish."""
        return self.max_poll_interval_ms / 1000 - PROFILE_TIMEOUT_MAX_SECONDS - ROUND_END_MARGIN_SECONDS

    dispatcher_split_budget: int = Field(
        default=64,
        ge=0,
        description="Extra requests a batch may spend splitting a 400/413/422 refusal to isolate the refused members.",
    )
    dispatcher_share_limits: bool = Field(
        default=True,
        description="Hold each profile's max_in_flight and requests_per_second across all dispatcher replicas "
        "(each takes its share, through heartbeats in the catalog); false: each replica applies the whole limits.",
    )
    dispatcher_heartbeat_seconds: float = Field(
        default=2.0, gt=0, le=60, description="How often a replica beats in the catalog and re-reads its shares."
    )
    dispatcher_replica_ttl_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A replica that has not beaten for this long is counted out (its share goes to the others); "
        "one whose own last beat is older than half of it holds its limited batches back.",
    )
    metrics_port: int = Field(default=9403, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
    render_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="CPU time rendering one request may take before the batch fails with a template error.",
    )
    render_max_bytes: int = Field(
        default=5_000_000,
        ge=10_000,
        le=100_000_000,
        description="Largest rendered body, path or header value (bytes); a rendering builds at most 8 times it.",
    )

    # The attempt inspector (services/dispatcher/inspector.py): the last requests and answers per definition and
    # profile, masked, for `exportctl attempts` and GET /export-definitions/{name}/attempts.
    inspector_enabled: bool = Field(
        default=True, description="Keep sampled HTTP attempts (masked, bodies cut) in the catalog for inspection."
    )
    inspector_keep: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Failed attempts kept per (definition, profile), and as many successful: the newest.",
    )
    inspector_success_sample: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Share of successful attempts kept, beyond the first of each (definition, profile) per flush.",
    )
    inspector_failure_sample: float = Field(default=1.0, ge=0, le=1, description="Share of failed attempts kept.")
    inspector_body_bytes: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Characters of a request or answer body kept (the rest is cut, after masking).",
    )
    inspector_retention_hours: float = Field(
        default=72.0, gt=0, description="How long a kept attempt stays (bodies hold member data)."
    )
    inspector_flush_seconds: float = Field(
        default=2.0, gt=0, le=300, description="How often captured attempts are written to the catalog."
    )
    inspector_buffer_attempts: int = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description="Attempts held in memory between two flushes at most (successes: half of them at most).",
    )

    @property
    def render_limits(self) -> RenderLimits:
        """The bounds every request's rendering is held to."""
        return RenderLimits(timeout_seconds=self.render_timeout_seconds, max_bytes=self.render_max_bytes)
