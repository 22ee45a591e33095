"""Every group consumer rebalances with the eager protocol, which the consumer loop's rebalance bookkeeping relies
on: a rebalance revokes every partition, then assigns (an incremental one would tell only what moves)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.coordinator.assignors.abstract import RebalanceProtocol

from shared.kafka import clients
from shared.settings import CommonSettings


class _Captured:
    """Stands for KafkaConsumer: keeps the configuration it is built with."""

    config: dict[str, Any] = {}

    def __init__(self, **config: Any) -> None:
        _Captured.config = config

    def subscribe(self, topics: list[str]) -> None:
        pass


def test_a_group_consumer_uses_only_eager_assignors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "KafkaConsumer", _Captured)
    clients.make_consumer(CommonSettings(), "exports.dispatcher", ["exports.batches"])
    assignors = _Captured.config["partition_assignment_strategy"]
    assert assignors
    assert all(list(assignor().supported_protocols()) == [RebalanceProtocol.EAGER] for assignor in assignors)
