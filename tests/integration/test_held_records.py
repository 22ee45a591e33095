"""Records a round handler holds back (a partner's circuit breaker open): the records after them are handled
meanwhile, the held ones are neither dead-lettered nor committed past, and are handled once their time comes."""

import time
import uuid

import pytest
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics
from shared.kafka.held_records import HoldRecord
from shared.settings import CommonSettings
from tests.integration.test_consumer_loop import _loop, _run_until
from tests.kafka_helpers import produce, read_to_end

pytestmark = pytest.mark.integration


def test_a_held_record_waits_uncommitted_while_the_records_after_it_are_handled(settings: CommonSettings):
    ensure_topics(settings)
    topics = settings.topics
    # One key: one partition, in this order.
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("same", RunRequested(definition=name).to_bytes()) for name in ("paused", "a", "b")],
    )
    holding = True
    handled: list[str] = []
    tries = 0

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        nonlocal tries
        results: list[list[Outgoing] | BaseException] = []
        for event in events:
            if event.definition == "paused" and holding:
                tries += 1
                results.append(HoldRecord("the partner's breaker is open", time.monotonic() + 0.2))
            else:
                handled.append(event.definition)
                results.append([])
        return results

    service = f"held-{uuid.uuid4().hex[:6]}"
    loop = _loop(settings, None, group="held-test", handle_round=handle_round, service=service)
    try:
        _run_until(loop, lambda: handled == ["a", "b"] and tries >= 3)  # handed to the handler again, and again
        (partition,) = [p for p in loop.consumer.assignment() if p.topic == topics.run_requests and _has(loop, p)]
        first = _first_offset(loop, partition)
        assert loop.consumer.committed(partition) in (None, first)  # not past the held record
        assert len(loop.held) == 1

        holding = False
        _run_until(loop, lambda: "paused" in handled)
        assert handled == ["a", "b", "paused"]
        assert loop.consumer.committed(partition) == first + 3  # past every record at once
        assert len(loop.held) == 0
        consumed = REGISTRY.get_sample_value(
            "member_export_consumer_records_total", {"service": service, "topic": topics.run_requests}
        )
        assert consumed == 3  # a held record handed back again is not consumed again
    finally:
        loop.consumer.close()
        loop.producer.close()
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def _has(loop, partition: TopicPartition) -> bool:
    return bool(loop.consumer.end_offsets([partition])[partition])


def _first_offset(loop, partition: TopicPartition) -> int:
    return loop.consumer.beginning_offsets([partition])[partition]


def test_held_records_due_at_once_share_the_round_size_with_the_poll(settings: CommonSettings):
    """Thousands of held records may come due at once (a breaker turning half-open): a round takes no more
    records than the loop's round size, held ones included, so that it stays within the poll interval."""
    ensure_topics(settings)
    topics = settings.topics
    names = [f"d{i}" for i in range(12)]
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("same", RunRequested(definition=name).to_bytes()) for name in names],
    )
    seen: set[str] = set()
    handled: list[str] = []
    rounds: list[int] = []

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        rounds.append(len(events))
        results: list[list[Outgoing] | BaseException] = []
        for event in events:
            if event.definition not in seen:  # held once, due at once
                seen.add(event.definition)
                results.append(HoldRecord("the partner's breaker is open", time.monotonic()))
            else:
                handled.append(event.definition)
                results.append([])
        return results

    loop = _loop(settings, None, group="held-cap", handle_round=handle_round, service="held-cap")
    loop.poll_records = lambda: 4
    try:
        _run_until(loop, lambda: len(handled) == len(names))
    finally:
        loop.consumer.close()
        loop.producer.close()
    assert sorted(handled) == sorted(names)
    assert max(rounds) <= 4, rounds


def test_a_loop_may_take_more_held_records_due_than_its_round_size(settings: CommonSettings):
    """With ``held_round_records`` (the extractor: a burst's runs started together), every held record due, up to
    that many, is handed to one round, though its polls take a few records at a time."""
    ensure_topics(settings)
    names = [f"d{i}" for i in range(12)]
    produce(
        settings.kafka_bootstrap_servers,
        settings.topics.run_requests,
        [("same", RunRequested(definition=name).to_bytes()) for name in names],
    )
    seen: set[str] = set()
    handled: list[str] = []
    rounds: list[int] = []

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        rounds.append(len(events))
        seen.update(event.definition for event in events)
        if len(seen) < len(names):  # held until every one has been read, then all due at once
            return [HoldRecord("not yet", time.monotonic()) for _ in events]
        handled.extend(event.definition for event in events)
        return [[] for _ in events]

    loop = _loop(settings, None, group="held-many", handle_round=handle_round, service="held-many")
    loop.poll_records = lambda: 4
    loop.held_round_records = 100
    try:
        _run_until(loop, lambda: len(handled) == len(names))
    finally:
        loop.consumer.close()
        loop.producer.close()
    assert sorted(handled) == sorted(names)
    assert max(rounds) >= len(names), rounds
