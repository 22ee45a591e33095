"""A dispatcher round handed over as it is decoded (issue 18; real Kafka, a real HTTP receiver on 127.0.0.1): the
round's first batches reach the partner while its last records are still being decoded, and every batch is still
delivered once, its outcome produced, nothing dead-lettered, every offset committed. A round mixing topics (so
priorities) is handed over whole, high priority first, as before."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.round_feed import feed_rounds
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch, Priority
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.kafka.records import Round, RoundStream
from shared.settings import CommonSettings
from tests.dispatcher_helpers import blocking_dispatcher, http_on_loop
from tests.integration.test_rounds_in_flight import _committed
from tests.kafka_helpers import produce, read_to_end, read_until

pytestmark = pytest.mark.integration

BATCHES = 12
#: Batches handed to the dispatcher at a time as the round is decoded.
CHUNK = 2
WAIT_SECONDS = 20.0


class _Observed:
    """A round stream of the production wiring, noting which batches were handed to it (``added``)."""

    def __init__(self, stream: RoundStream[MemberBatch], added: list[int]) -> None:
        self.stream, self.added = stream, added

    def add(self, events: Round[MemberBatch]) -> None:
        self.added.extend(batch.batch_index for batch in events)
        self.stream.add(events)

    def close(self) -> Sequence[list[Outgoing] | BaseException]:
        return self.stream.close()


def test_a_rounds_first_batches_reach_the_partner_while_its_last_records_are_decoded(
    settings: CommonSettings, tmp_path
):
    topics = settings.topics
    ensure_topics(settings)
    run_id = uuid.uuid4()
    batches = [
        MemberBatch(run_id=run_id, definition="d", template="t", batch_index=i, members=[{"id": i}])
        for i in range(BATCHES)
    ]
    # One key: one partition, the whole backlog in one poll.
    produce(settings.kafka_bootstrap_servers, topics.member_batches, [("one-key", b.to_bytes()) for b in batches])
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    rounds: list[list[int]] = []  # per round, the batches handed to the dispatcher so far
    seen_while_decoding: list[str] = []  # what the partner had received when the last record was decoded
    with HttpReceiver() as receiver, http_on_loop() as http:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        dispatcher = blocking_dispatcher(catalog, http, RetryBudget(), topics, cache_seconds=60)
        identities = {batch.batch_index: batch.identity for batch in batches}

        def received_of_this_round() -> list[str]:
            keys = {receipt.headers["Idempotency-Key"] for receipt in receiver.receipts()}
            return [identities[i] for i in (rounds[-1] if rounds else []) if identities[i] in keys]

        def decode(value: bytes) -> MemberBatch:
            batch = MemberBatch.model_validate_json(value)
            if batch.batch_index == BATCHES - 1:
                # The round's last record: requests of the batches handed over before it reach the partner while it
                # is decoded (a round decoded whole first would wait here in vain, and this record be dead-lettered).
                wait_until(
                    lambda: bool(received_of_this_round()), timeout=WAIT_SECONDS, interval=0.01, what="a request"
                )
                seen_while_decoding.extend(received_of_this_round())
            return batch

        group = f"{settings.topic_prefix}dispatcher"
        loop: ConsumerLoop[MemberBatch] = ConsumerLoop(
            service="dispatcher-stream-test",
            consumer=make_consumer(settings, group, topics.member_batch_topics()),
            producer=make_producer(settings, "dispatcher-stream-test"),
            decode=value_decoder(decode),
            handle_round=lambda events: http.portal.call(dispatcher.dispatcher.handle_all, events),
            dead_letter_topic=topics.dead_letters,
        )
        loop.poll_records = lambda: BATCHES
        feed_rounds(loop, http.portal, dispatcher.dispatcher.handle_feed, CHUNK)  # as the service wires it
        production = loop.round_stream
        assert production is not None

        def observed() -> RoundStream[MemberBatch]:
            rounds.append([])
            return _Observed(production(), rounds[-1])

        loop.round_stream = observed
        thread = threading.Thread(target=loop.run, name="loop", daemon=True)
        thread.start()
        try:
            outcomes = read_until(
                settings.kafka_bootstrap_servers, topics.run_events, lambda values: len(values) >= BATCHES
            )
            wait_until(
                lambda: _committed(settings, group, topics.member_batches) == BATCHES,
                timeout=WAIT_SECONDS,
                interval=0.05,
                what="every record committed",
            )
        finally:
            loop.stopping.set()
            thread.join(WAIT_SECONDS)
        assert not thread.is_alive()
        keys = Counter(receipt.headers["Idempotency-Key"] for receipt in receiver.receipts())
    catalog.close()
    assert seen_while_decoding, rounds
    # Each batch sent once; its outcome produced once, delivered; nothing dead-lettered.
    assert keys == Counter({batch.identity: 1 for batch in batches})
    delivered = [RUN_EVENT_ADAPTER.validate_json(value) for value in outcomes]
    assert sorted(o.batch_index for o in delivered if isinstance(o, BatchOutcome) and o.delivered == 1) == list(
        range(BATCHES)
    )
    assert len(read_to_end(settings.kafka_bootstrap_servers, topics.run_events)) == BATCHES
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def test_a_round_of_two_priorities_is_handed_over_whole_high_priority_first(settings: CommonSettings, tmp_path):
    topics = settings.topics
    ensure_topics(settings)
    normal = [
        MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=i, members=[{"id": i}])
        for i in range(4)
    ]
    high = [
        MemberBatch(
            run_id=uuid.uuid4(),
            definition="d",
            template="t",
            priority=Priority.HIGH,
            batch_index=i,
            members=[{"id": i}],
        )
        for i in range(2)
    ]
    produce(settings.kafka_bootstrap_servers, topics.member_batches, [("n", b.to_bytes()) for b in normal])
    produce(settings.kafka_bootstrap_servers, topics.member_batches_for("high"), [("h", b.to_bytes()) for b in high])
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(SavedQuery(name="q", sql="select 1 as id"))
    rounds: list[list[int]] = []
    with HttpReceiver() as receiver, http_on_loop() as http:
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        dispatcher = blocking_dispatcher(catalog, http, RetryBudget(), topics, cache_seconds=60)
        # One request at a time, so that the partner sees the order the round begins its batches in.
        dispatcher.dispatcher.workers.concurrency = 1
        loop: ConsumerLoop[MemberBatch] = ConsumerLoop(
            service="dispatcher-stream-test",
            consumer=make_consumer(settings, f"{settings.topic_prefix}dispatcher", topics.member_batch_topics()),
            producer=make_producer(settings, "dispatcher-stream-test"),
            decode=value_decoder(MemberBatch.model_validate_json),
            handle_round=lambda events: http.portal.call(dispatcher.dispatcher.handle_all, events),
            dead_letter_topic=topics.dead_letters,
        )
        loop.poll_records = lambda: len(normal) + len(high)
        feed_rounds(loop, http.portal, dispatcher.dispatcher.handle_feed, 1)
        production = loop.round_stream
        assert production is not None

        def observed() -> RoundStream[MemberBatch]:
            rounds.append([])
            return _Observed(production(), rounds[-1])

        loop.round_stream = observed
        thread = threading.Thread(target=loop.run, name="loop", daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: len(receiver.receipts()) >= len(normal) + len(high),
                timeout=WAIT_SECONDS,
                interval=0.02,
                what="every batch delivered",
            )
        finally:
            loop.stopping.set()
            thread.join(WAIT_SECONDS)
        order = [receipt.headers["Idempotency-Key"] for receipt in receiver.receipts()]
    catalog.close()
    if rounds:  # a poll of one topic only was streamed: nothing to see of the order here
        pytest.skip(f"the records came in polls of one topic each ({len(rounds)} streamed): no mixed round")
    # One mixed round, handed over whole: high priority first, however the poll ordered them.
    assert order[: len(high)] == [b.identity for b in high] or set(order[: len(high)]) == {b.identity for b in high}
    assert sorted(order) == sorted(b.identity for b in normal + high)
