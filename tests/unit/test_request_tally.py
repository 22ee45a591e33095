"""The request metrics counted a batch at a time (:class:`services.dispatcher.metrics.RequestTally`): what a flush
adds to ``member_export_dispatcher_requests_total`` and ``..._request_duration_seconds`` is what one ``inc`` and one
``observe`` per attempt add, failures show at once, and a dispatched batch's requests are all in the series when
its outcome is made."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.metrics import (
    REQUEST_SECONDS,
    REQUEST_SECONDS_BUCKETS,
    REQUESTS,
    STATUS_CLASSES,
    RequestTally,
    status_class,
)
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.rendering import RenderedRequest
from shared.events import MemberBatch
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics
from tests.unit.test_dispatcher_in_flight_gauge import Catalog

REQUESTS_TOTAL = "member_export_dispatcher_requests_total"
SECONDS = "member_export_dispatcher_request_duration_seconds"
BOUNDS = [*(str(float(bound)) for bound in REQUEST_SECONDS_BUCKETS), "+Inf"]


def series(labels: tuple[str, str]) -> dict[str, float]:
    """The request series of ``labels`` as a scrape reads them (absent: 0).

    Read from the two metrics' own samples, one collection each: ``REGISTRY.get_sample_value`` collects every metric
    of the process per value (~20 values, and late in a whole test session the registry holds every earlier test's
    series: 10.6 s for this module's hypothesis test in CI)."""
    definition, profile = labels
    samples = {
        (sample.name, sample.labels.get("status_class"), sample.labels.get("le")): sample.value
        for metric in (*REQUESTS.collect(), *REQUEST_SECONDS.collect())
        for sample in metric.samples
        if sample.labels.get("definition") == definition and sample.labels.get("profile") == profile
    }
    found: dict[str, float] = {}
    for status in STATUS_CLASSES:
        found[status] = samples.get((REQUESTS_TOTAL, status, None)) or 0.0
    for bound in BOUNDS:
        found[f"le={bound}"] = samples.get((f"{SECONDS}_bucket", None, bound)) or 0.0
    found["count"] = samples.get((f"{SECONDS}_count", None, None)) or 0
    found["sum"] = samples.get((f"{SECONDS}_sum", None, None)) or 0.0
    return found


def reference(attempts: list[tuple[int | None, float]]) -> dict[str, float]:
    """The same series from one ``inc`` and one ``observe`` an attempt (the metrics as prometheus-client keeps them)."""
    registry = CollectorRegistry()
    counter = Counter("r", "r", ["status_class"], registry=registry)
    histogram = Histogram("s", "s", buckets=REQUEST_SECONDS_BUCKETS, registry=registry)
    for status, seconds in attempts:
        counter.labels(status_class(status)).inc()
        histogram.observe(seconds)
    found: dict[str, float] = {}
    for name in STATUS_CLASSES:
        found[name] = registry.get_sample_value("r_total", {"status_class": name}) or 0.0
    for bound in BOUNDS:
        found[f"le={bound}"] = registry.get_sample_value("s_bucket", {"le": bound}) or 0.0
    found["count"] = registry.get_sample_value("s_count") or 0
    found["sum"] = registry.get_sample_value("s_sum") or 0.0
    return found


def fresh_labels() -> tuple[str, str]:
    return (f"tally-{uuid.uuid4().hex[:12]}", "p")


statuses = st.one_of(st.none(), st.sampled_from([200, 201, 204, 302, 400, 404, 429, 500, 503]))
# Durations on and around the bucket bounds too (a bound belongs to its own bucket: ``le``).
durations = st.one_of(
    st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
    st.sampled_from([float(bound) for bound in REQUEST_SECONDS_BUCKETS]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(statuses, durations), max_size=40), st.integers(min_value=0, max_value=40))
def test_a_flush_adds_what_an_inc_and_an_observe_per_attempt_add(
    attempts: list[tuple[int | None, float]], flush_after: int
) -> None:
    labels = fresh_labels()
    tally = RequestTally(labels)
    for position, (status, seconds) in enumerate(attempts):
        tally.count(status, seconds, success=status is not None and 200 <= status < 300, now=0.0)
        if position == flush_after:
            tally.flush()  # a flush in the middle too: what was counted is added once, never twice
    tally.flush()
    tally.flush()  # nothing left: adds nothing
    got, expected = series(labels), reference(attempts)
    assert got.pop("sum") == pytest.approx(expected.pop("sum"))
    assert got == expected


def test_successes_wait_for_the_flush_a_failure_shows_at_once_with_them() -> None:
    labels = fresh_labels()
    tally = RequestTally(labels)
    tally.count(200, 0.02, success=True, now=10.0)
    tally.count(204, 0.03, success=True, now=10.5)
    assert series(labels)["2xx"] == 0, "a success waits for its batch's end (or its second)"
    tally.count(503, 0.2, success=False, now=10.6)
    now = series(labels)
    assert (now["2xx"], now["5xx"], now["count"]) == (2, 1, 3), "a failure flushes what waited with it"
    tally.count(None, 30.0, success=False, now=11.0)
    assert series(labels)["error"] == 1


def test_a_success_is_flushed_once_the_oldest_waiting_is_a_second_old() -> None:
    labels = fresh_labels()
    tally = RequestTally(labels)
    tally.count(200, 0.01, success=True, now=100.0)
    tally.count(200, 0.01, success=True, now=100.0 + RequestTally.FLUSH_SECONDS / 2)
    assert series(labels)["2xx"] == 0
    tally.count(200, 0.01, success=True, now=100.0 + RequestTally.FLUSH_SECONDS)
    assert series(labels)["2xx"] == 3
    tally.count(200, 0.01, success=True, now=100.0 + RequestTally.FLUSH_SECONDS + 0.1)  # a new oldest
    assert series(labels)["2xx"] == 3


class Partner:
    """Answers each request with the next status of ``statuses`` (200 once they run out); ``hold`` blocks them."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.hold: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        if self.hold is not None:
            self.waiting.set()
            await self.hold.wait()
        return PartnerAnswer(self.statuses.pop(0) if self.statuses else 200, None, b"")

    async def aclose(self) -> None:
        return None


def dispatcher_for(partner: Partner, profile: str, definition: str) -> Dispatcher:
    """A dispatcher of a catalog with ``definition`` (a definition it does not have is counted as unknown)."""
    catalog = Catalog(profile)
    catalog.objects[("ExportDefinition", definition)] = ExportDefinition(name=definition, query="q", template="t")
    return Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, RetryBudget(initial_backoff=0.0, max_backoff=0.0)),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=3,
    )


def test_a_batch_s_requests_are_all_in_the_series_when_it_is_done() -> None:
    profile = f"tally-{uuid.uuid4().hex[:8]}"
    definition = f"d-{uuid.uuid4().hex[:8]}"
    partner = Partner([200, 404, 503])  # the 503 is retried (a 200 then): 8 attempts for 7 members

    async def scenario() -> None:
        dispatcher = dispatcher_for(partner, profile, definition)
        batch = MemberBatch(
            run_id=uuid.uuid4(),
            definition=definition,
            template="t",
            batch_index=0,
            members=[{"id": n} for n in range(7)],
        )
        try:
            (result,) = await dispatcher.handle_all([batch])
            assert not isinstance(result, BaseException)
        finally:
            dispatcher.renderer.close()

    asyncio.run(scenario())
    got = series((definition, profile))
    assert (got["2xx"], got["4xx"], got["5xx"], got["count"]) == (6, 1, 1, 8)
    assert got["le=+Inf"] == 8


def test_a_cancelled_attempt_s_duration_is_observed_without_a_status() -> None:
    profile = f"tally-{uuid.uuid4().hex[:8]}"
    definition = f"d-{uuid.uuid4().hex[:8]}"
    partner = Partner([])
    partner.hold = asyncio.Event()

    async def scenario() -> None:
        dispatcher = dispatcher_for(partner, profile, definition)
        batch = MemberBatch(
            run_id=uuid.uuid4(), definition=definition, template="t", batch_index=0, members=[{"id": 1}]
        )
        try:
            handling = asyncio.ensure_future(dispatcher.handle_all([batch]))
            await asyncio.wait_for(partner.waiting.wait(), timeout=10)
            dispatcher.stopping.set()  # the round abandons the batch: its request is cancelled
            await asyncio.wait_for(handling, timeout=10)
        finally:
            dispatcher.renderer.close()

    asyncio.run(scenario())
    got = series((definition, profile))
    assert got["count"] == 1
    assert sum(got[status] for status in STATUS_CLASSES) == 0


class HoldsMemberOne:
    """Answers 200 at once, except member 1's request, held until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        if str(json.loads(request.content)["id"]) == "1":
            self.held.set()
            await self.release.wait()
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


def test_a_success_shows_within_a_second_while_its_batch_is_still_in_flight() -> None:
    profile = f"tally-{uuid.uuid4().hex[:8]}"
    definition = f"d-{uuid.uuid4().hex[:8]}"
    partner = HoldsMemberOne()
    shown_after: list[float] = []

    async def scenario() -> None:
        dispatcher = dispatcher_for(partner, profile, definition)  # type: ignore[arg-type]
        batch = MemberBatch(
            run_id=uuid.uuid4(), definition=definition, template="t", batch_index=0, members=[{"id": 0}, {"id": 1}]
        )
        loop = asyncio.get_running_loop()
        try:
            handling = asyncio.ensure_future(dispatcher.handle_all([batch]))
            await asyncio.wait_for(partner.held.wait(), timeout=10)
            started = loop.time()
            deadline = started + 5 * RequestTally.FLUSH_SECONDS
            # Polled on the one child, not through series(): a collection of every series late in a whole test
            # session took seconds on a loaded CI machine, blocking the loop past the deadline (session 52).
            successes = REQUESTS.labels(definition, profile, "2xx")
            while successes._value.get() < 1 and loop.time() < deadline:
                await asyncio.sleep(0.02)  # polling for the condition, up to the deadline
            shown_after.append(loop.time() - started)
            got = series((definition, profile))
            assert not handling.done(), "member 1's request is still in flight"
            assert (got["2xx"], got["count"]) == (1, 1), "member 0's success is in its series before the batch ends"
            partner.release.set()
            (result,) = await asyncio.wait_for(handling, timeout=10)
            assert not isinstance(result, BaseException)
        finally:
            partner.release.set()
            dispatcher.renderer.close()

    asyncio.run(scenario())
    # Within the flush interval (and some slack for a loaded machine), not at the batch's end.
    assert shown_after[0] < RequestTally.FLUSH_SECONDS + 1.0
    assert series((definition, profile))["2xx"] == 2
