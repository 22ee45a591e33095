"""A dispatcher round past its deadline (real Kafka, a slow HTTP receiver on 127.0.0.1): the batches it has not begun
are handed back uncommitted and delivered in a later round, each exactly once, with nothing dead-lettered, and every
offset committed in the end; high-priority batches arriving meanwhile begin ahead of the normal ones handed back."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.round_admission import RoundOver
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch, Priority
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.kafka.held_records import HoldRecord
from shared.settings import CommonSettings
from shared.topics import Topics
from tests.dispatcher_helpers import blocking_dispatcher, dispatch_catalog, http_on_loop
from tests.integration.test_rounds_in_flight import _committed
from tests.kafka_helpers import produce, read_to_end, read_until

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0
BATCHES = 6


@pytest.mark.parametrize("rounds_in_flight", [1, 2])
def test_batches_not_begun_by_the_deadline_go_to_a_later_round_and_are_delivered_once(
    settings: CommonSettings, tmp_path, rounds_in_flight: int
):
    topics = settings.topics
    ensure_topics(settings)
    run_id = uuid.uuid4()
    batches = [
        MemberBatch(run_id=run_id, definition="d", template="t", batch_index=i, members=[{"id": i}])
        for i in range(BATCHES)
    ]
    # One key: one partition, so a batch handed back holds back the commits of those after it.
    produce(settings.kafka_bootstrap_servers, topics.member_batches, [("one-key", b.to_bytes()) for b in batches])
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    rounds: list[list[int]] = []  # each round's batches, as handed to the dispatcher
    handed_back: list[int] = []
    # A slow partner: each request takes 0.5 s, and a round begins 2 requests at once and none after 0.2 s.
    with HttpReceiver(delay=0.5) as receiver, http_on_loop() as http:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        dispatcher = blocking_dispatcher(catalog, http, RetryBudget(), topics, cache_seconds=60)
        dispatcher.dispatcher.admitted_requests = 2
        dispatcher.dispatcher.round_seconds = 0.2

        def handle_round(events: list[MemberBatch]) -> Sequence[list[Outgoing] | BaseException]:
            rounds.append([batch.batch_index for batch in events])
            results = dispatcher.portal.call(dispatcher.dispatcher.handle_all, events)
            for batch, result in zip(events, results, strict=True):
                if isinstance(result, HoldRecord):
                    handed_back.append(batch.batch_index)
            return results

        group = f"{settings.topic_prefix}dispatcher"
        loop: ConsumerLoop[MemberBatch] = ConsumerLoop(
            service="dispatcher-deadline-test",
            consumer=make_consumer(settings, group, topics.member_batch_topics()),
            producer=make_producer(settings, "dispatcher-deadline-test"),
            decode=value_decoder(MemberBatch.model_validate_json),
            handle_round=handle_round,
            dead_letter_topic=topics.dead_letters,
            rounds_in_flight=rounds_in_flight,
        )
        loop.poll_records = lambda: BATCHES  # the whole backlog in one round, were it all begun at once
        thread = threading.Thread(target=loop.run, name="loop", daemon=True)
        thread.start()
        try:
            outcomes = read_until(
                settings.kafka_bootstrap_servers, topics.run_events, lambda values: len(values) >= BATCHES
            )
            wait_until(
                lambda: _committed(settings, group, topics.member_batches) == BATCHES,
                timeout=DEADLINE_SECONDS,
                interval=0.05,
                what="every record committed",
            )
        finally:
            loop.stopping.set()
            thread.join(DEADLINE_SECONDS)
        assert not thread.is_alive()
        keys = Counter(receipt.headers["Idempotency-Key"] for receipt in receiver.receipts())
    catalog.close()
    # Handed back, then delivered in a later round: the first round did not begin them all.
    assert handed_back, rounds
    assert len(rounds) >= 2, rounds
    assert set(handed_back) <= {index for later in rounds[1:] for index in later}
    # Each batch sent once, whichever round began it; its outcome produced once; nothing dead-lettered.
    assert keys == Counter({batch.identity: 1 for batch in batches})
    delivered = [RUN_EVENT_ADAPTER.validate_json(value) for value in outcomes]
    assert sorted(o.batch_index for o in delivered if isinstance(o, BatchOutcome) and o.delivered == 1) == list(
        range(BATCHES)
    )
    assert len(read_to_end(settings.kafka_bootstrap_servers, topics.run_events)) == BATCHES
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


URGENT = 2
NORMAL = 10


def test_high_priority_batches_begin_ahead_of_normal_batches_handed_back(settings: CommonSettings, tmp_path):
    """Normal batches handed back by a round past its deadline are held and handed to the next rounds; high-priority
    batches arriving meanwhile are begun ahead of them in the round they share, and every batch is delivered once."""
    topics = settings.topics
    ensure_topics(settings)
    run_id, urgent_run = uuid.uuid4(), uuid.uuid4()
    normal = [
        MemberBatch(run_id=run_id, definition="d", template="t", batch_index=i, members=[{"id": i}])
        for i in range(NORMAL)
    ]
    urgent = [
        MemberBatch(
            run_id=urgent_run, definition="d", template="t", priority=Priority.HIGH, batch_index=i, members=[{"id": i}]
        )
        for i in range(URGENT)
    ]
    produce(settings.kafka_bootstrap_servers, topics.member_batches, [("one-key", b.to_bytes()) for b in normal])
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    # Each round: what it was handed, and which of them it began (by identity).
    rounds: list[tuple[list[MemberBatch], set[str]]] = []
    with HttpReceiver(delay=0.5) as receiver, http_on_loop() as http:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        dispatcher = blocking_dispatcher(catalog, http, RetryBudget(), topics, cache_seconds=60)
        dispatcher.dispatcher.admitted_requests = 2
        dispatcher.dispatcher.round_seconds = 0.2

        def handle_round(events: list[MemberBatch]) -> Sequence[list[Outgoing] | BaseException]:
            if not rounds:  # the urgent batches arrive while the first round hands normal ones back
                produce(
                    settings.kafka_bootstrap_servers,
                    topics.member_batches_for("high"),
                    [(b.identity, b.to_bytes()) for b in urgent],
                )
            results = dispatcher.portal.call(dispatcher.dispatcher.handle_all, events)
            begun = {b.identity for b, r in zip(events, results, strict=True) if not isinstance(r, HoldRecord)}
            rounds.append((list(events), begun))
            return results

        group = f"{settings.topic_prefix}dispatcher"
        loop: ConsumerLoop[MemberBatch] = ConsumerLoop(
            service="dispatcher-priority-deadline-test",
            consumer=make_consumer(settings, group, topics.member_batch_topics()),
            producer=make_producer(settings, "dispatcher-priority-deadline-test"),
            decode=value_decoder(MemberBatch.model_validate_json),
            handle_round=handle_round,
            dead_letter_topic=topics.dead_letters,
            priority_topics=topics.member_batch_topics(),
        )
        loop.poll_records = lambda: NORMAL
        thread = threading.Thread(target=loop.run, name="loop", daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: len(receiver.receipts()) >= NORMAL + URGENT,
                timeout=DEADLINE_SECONDS,
                interval=0.05,
                what="every batch delivered",
            )
        finally:
            loop.stopping.set()
            thread.join(DEADLINE_SECONDS)
        assert not thread.is_alive()
        keys = Counter(receipt.headers["Idempotency-Key"] for receipt in receiver.receipts())
    catalog.close()
    assert keys == Counter({batch.identity: 1 for batch in normal + urgent})
    urgent_keys = {b.identity for b in urgent}
    shared = [
        (events, begun)
        for events, begun in rounds
        if urgent_keys & {b.identity for b in events} and {b.identity for b in events} - urgent_keys
    ]
    # The urgent batches met held normal ones in a round (the first round handed back 8 of 10: ~4 rounds of them).
    assert shared, [[b.priority.value for b in events] for events, _ in rounds]
    for events, begun in shared:
        # In a round both share, no normal batch begins while an urgent one waits for the next round.
        handed_back_urgent = {b.identity for b in events} & urgent_keys - begun
        assert not handed_back_urgent or not (begun - urgent_keys), rounds
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def test_a_round_to_a_hanging_partner_with_max_in_flight_1_ends_at_its_round_end(tmp_path, migrated_catalog):
    """A partner that never answers, a profile of ``max_in_flight`` 1 (HTTP on 127.0.0.1, no Kafka): the round's
    requests go one at a time, each its retry budget and one timeout; at the round's end those still waiting for the
    slot are not sent and their batches are handed back, so the round ends then (before: 16 requests one after the
    other, ~24 s, whatever the poll interval)."""
    timeout, round_end = 0.5, 2.0
    with HttpReceiver(delay=30) as hang, http_on_loop() as http:
        profile = ConnectionProfile(
            name="p", base_url=hang.url, timeout_seconds=timeout, rate_limit={"max_in_flight": 1}
        )
        template = HttpTemplate(name="t", query="q", profile="p", path="/m")
        with dispatch_catalog(migrated_catalog, tmp_path, profile, template) as catalog:
            dispatcher = Dispatcher(
                objects=CatalogCache(catalog.definitions, catalog.runs, ttl=60),
                deliverer=Deliverer(
                    http.partners, RetryBudget(max_attempts=10, max_seconds=1.0, initial_backoff=0.01, max_backoff=0.02)
                ),
                tokens=OAuthTokenCache(http.client),
                topics=Topics("x."),
                concurrency=8,
            )
            dispatcher.round_end_seconds = round_end
            sent = [
                MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=i, members=[{"id": i}])
                for i in range(16)
            ]
            started = time.monotonic()
            results = http.portal.call(dispatcher.handle_all, sent)
            took = time.monotonic() - started
            arrived = hang.state.active  # every request that arrived is still waiting (30 s), none answered
    # The round's end, then one attempt's timeout at most (and the round's checks' slack).
    assert took < round_end + timeout + 1.5, f"the round took {took:.1f} s"
    finished = [batch for batch, result in zip(sent, results, strict=True) if isinstance(result, list)]
    handed_back = [batch for batch, result in zip(sent, results, strict=True) if isinstance(result, RoundOver)]
    assert len(finished) + len(handed_back) == len(sent)
    assert 1 <= len(finished) <= 3
    assert len(handed_back) >= 13
    for batch, result in zip(sent, results, strict=True):  # the finished ones spent their budget: dead-lettered
        if isinstance(result, list):
            outcome = RUN_EVENT_ADAPTER.validate_json(result[-1].value)
            assert isinstance(outcome, BatchOutcome)
            assert (outcome.failed, outcome.attempts) == (1, 2), batch
    # Nothing of the batches that waited for the slot went out: the finished ones' attempts, and at most one attempt
    # of a request whose retry would have begun past the end.
    assert 2 * len(finished) <= arrived <= 2 * len(finished) + 1
