"""The consumer loop's lag per assigned partition, on a real broker: what is left to read after each round, and
no series once the consumer has let its partitions go."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from shared.events import RunRequested
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.settings import CommonSettings
from tests.kafka_helpers import produce_with_headers

pytestmark = pytest.mark.integration

SERVICE = "lag-test"


def _lags(group: str) -> dict[tuple[str, str], float]:
    """The ``member_export_consumer_lag`` series of ``group``, by (topic, partition)."""
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for metric in REGISTRY.collect()
        if metric.name == "member_export_consumer_lag"
        for sample in metric.samples
        if sample.labels["service"] == SERVICE and sample.labels["group"] == group
    }


def test_the_lag_of_each_assigned_partition_is_what_is_left_to_read_and_goes_with_the_partitions(
    settings: CommonSettings,
):
    ensure_topics(settings)
    topic = settings.topics.run_requests
    definitions = [f"d{i}" for i in range(6)]
    # One key: all six on one partition, the topic's other partitions empty.
    [(partition, _), *_] = produce_with_headers(
        settings.kafka_bootstrap_servers,
        topic,
        [("one-key", RunRequested(definition=d).to_bytes(), []) for d in definitions],
    )
    group = f"{settings.topic_prefix}lag-test"
    handled: list[str] = []

    def handler(request: RunRequested) -> list[Outgoing]:
        handled.append(request.definition)
        return []

    loop = ConsumerLoop(
        service=SERVICE,
        consumer=make_consumer(settings, group, [topic], max_poll_records=1),
        producer=make_producer(settings, SERVICE),
        decode=value_decoder(RunRequested.model_validate_json),
        handler=handler,
        dead_letter_topic=settings.topics.dead_letters,
    )
    assert _lags(group) == {}, "no series before the consumer has partitions"
    seen: list[float] = []  # the busy partition's lag after each round that handled a record
    every_partition = {(topic, str(p)) for p in range(settings.topic_partitions)}
    deadline = time.monotonic() + 60
    while len(handled) < len(definitions) or _lags(group).keys() != every_partition:
        assert time.monotonic() < deadline, f"lag series not complete in time: {_lags(group)}"
        before = len(handled)
        loop.poll_once()
        if len(handled) > before:
            seen.append(_lags(group)[(topic, str(partition))])
    assert seen == [5, 4, 3, 2, 1, 0], "one record a round: the partition's end offset minus the position"
    assert _lags(group) == dict.fromkeys(every_partition, 0.0), "each assigned partition, the empty ones at 0"

    loop.stopping.set()
    loop.run()  # stops at once: closes the consumer, whose partitions go back to the group
    assert _lags(group) == {}
