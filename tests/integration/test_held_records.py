"""Records a round handler holds back (a partner's circuit breaker open): the records after them are handled
meanwhile, the held ones are neither dead-lettered nor committed past, and are handled once their time comes."""

import threading
import time
import uuid

import pytest
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics, make_consumer
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


@pytest.mark.parametrize("rounds_in_flight", [1, 2])
def test_a_record_held_across_a_rebalance_that_leaves_its_partition_here_is_handled(
    settings: CommonSettings, rounds_in_flight: int
):
    """A rebalance revokes every partition and may give one back to the same consumer, which then goes on from its
    position (kafka-python keeps it): the record held there must be read again, not forgotten with its hold (the
    extractor's key range handed to the next round, never started once a replica died: session 43's CI)."""
    ensure_topics(settings)
    topics = settings.topics
    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("same", RunRequested(definition="h").to_bytes())])
    tries = 0

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        nonlocal tries
        tries += len(events)
        # Held the first time for longer than the test: only reading it again hands it to the handler again.
        return [HoldRecord("handed to the next round", time.monotonic() + 3600.0) if tries == 1 else [] for _ in events]

    group = f"held-rebalance-{rounds_in_flight}"
    loop = _loop(settings, None, group=group, handle_round=handle_round, rounds_in_flight=rounds_in_flight)
    joined, stop = threading.Event(), threading.Event()
    member = threading.Thread(target=_another_member, args=(settings, group, joined, stop), daemon=True)
    try:
        _run_until(loop, lambda: len(loop.held) == 1)
        owned = loop.consumer.assignment()
        member.start()
        _run_until(loop, joined.is_set)
        _run_until(loop, lambda: tries >= 2, timeout=30.0)
        assert tries == 2  # handed to the handler again once, not twice (as held and as read again)
        assert loop.consumer.assignment() == owned  # the loop kept its partitions through the rebalance
        assert len(loop.held) == 0
        # And committed, once the group is stable again: it may rebalance twice (the leader learns the other topic's
        # partitions late), and a commit during the second is refused, or a round in flight settles the record while
        # its partition is revoked: the loop commits it once the partition is given back.
        (partition,) = [p for p in owned if p.topic == topics.run_requests and _has(loop, p)]
        _run_until(loop, lambda: loop.consumer.committed(partition) == 1, timeout=30.0)
    finally:
        stop.set()
        member.join(timeout=30.0)
        loop.consumer.close()
        loop.producer.close()
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def test_a_held_record_read_again_after_a_rebalance_while_its_round_is_in_flight_is_not_handled_twice_at_once(
    settings: CommonSettings,
):
    """With rounds in flight, a held record may be with the handler (due again) when a rebalance forgets its hold and
    seeks its partition back to it: the next poll reads it again. It is not handed to the handler again while that
    round handles it (the dispatcher would send the same batch twice at once), and is settled once."""
    ensure_topics(settings)
    topics = settings.topics
    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("same", RunRequested(definition="h").to_bytes())])
    calls, concurrent = [], []
    handling = 0
    lock, release = threading.Lock(), threading.Event()

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        nonlocal handling
        with lock:
            calls.append(len(events))
            if handling:
                concurrent.append(len(calls))
            handling += len(events)
        try:
            if len(calls) == 1:  # held, due again at once: the next round takes it
                return [HoldRecord("the partner's breaker is open", time.monotonic()) for _ in events]
            if len(calls) == 2:  # in flight until the rebalance has sought its partition back and it is read again
                assert release.wait(60.0), "the record was never read again"
            return [[] for _ in events]
        finally:
            with lock:
                handling -= len(events)

    group = "held-in-flight-rebalance"
    # Three rounds in flight: the round with the handler, the one of the record read again, and room for the loop
    # to go on polling (with two, the full window would wait for the first round, and the rebalance for the loop).
    loop = _loop(settings, None, group=group, handle_round=handle_round, rounds_in_flight=3)
    consumer = loop.consumer
    sought: list[tuple[TopicPartition, int]] = []
    seek = consumer.seek

    def noting_seek(partition: TopicPartition, offset: int) -> None:  # the loop's listener seeks through it
        sought.append((partition, offset))
        seek(partition, offset)

    consumer.seek = noting_seek
    joined, stop = threading.Event(), threading.Event()

    def read_again() -> bool:
        """Whether the partition, sought back to the held record, was read past it since."""
        if not sought:
            return False
        partition, offset = sought[-1]
        try:
            return consumer.position(partition, timeout_ms=0) > offset
        except Exception:  # noqa: BLE001 - no position yet (the rebalance not over)
            return False

    member = threading.Thread(target=_another_member, args=(settings, group, joined, stop), daemon=True)
    try:
        _run_until(loop, lambda: len(calls) == 2)  # with the handler again, in a round in flight
        member.start()
        _run_until(loop, read_again, timeout=60.0)
        loop.poll_once()  # a round of what was read again, if any, goes to the handler
        release.set()
        _run_until(loop, lambda: loop._window is not None and not len(loop._window) and not len(loop.held))
        # Committed, the copy neither dropped nor left behind: once the group is stable again (the group's leader may
        # learn the other member's topic late and rebalance a second time, the round settled meanwhile).
        partition = sought[-1][0]
        _run_until(loop, lambda: consumer.committed(partition) == 1, timeout=30.0)
        assert concurrent == []  # never with the handler twice at once
        assert calls == [1, 1]  # held once, then handled once: the copy read again was settled with it
    finally:
        release.set()
        stop.set()
        member.join(timeout=30.0)
        loop.consumer.close()
        loop.producer.close()
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def _another_member(settings: CommonSettings, group: str, joined: threading.Event, stop: threading.Event) -> None:
    """A member of the loop's group subscribed to another topic until ``stop``: its joining rebalances the group, and
    every partition of the loop's topic is assigned to the loop again (``joined`` once it has its own)."""
    other = make_consumer(settings, settings.topic_prefix + group, [settings.topics.run_events])
    try:
        while not stop.is_set():
            other.poll(timeout_ms=100)
            if other.assignment():
                joined.set()
    finally:
        other.close()


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
