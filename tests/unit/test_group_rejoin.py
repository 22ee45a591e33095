"""revive_lost_rejoin: a group join kafka-python finished and will not take is asked for again, and only that."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared.kafka.group_rejoin import lost_rejoin, revive_lost_rejoin


@dataclass
class _Task:
    is_done: bool


@dataclass
class _Coordinator:
    """The part of kafka-python 3.0's ConsumerCoordinator the workaround reads and sets."""

    rejoining: bool
    _join_task: _Task | None
    rejoin_needed: bool = False
    rejoins_requested: int = 0

    def need_rejoin(self) -> bool:
        return self.rejoin_needed

    def request_rejoin(self) -> None:
        self.rejoins_requested += 1
        self.rejoin_needed = True


@dataclass
class _Consumer:
    _coordinator: _Coordinator
    config: dict[str, Any] = field(default_factory=lambda: {"group_id": "g"})


@pytest.mark.parametrize(
    ("coordinator", "lost"),
    [
        (_Coordinator(rejoining=True, _join_task=_Task(is_done=True)), True),  # finished, no poll will take it
        (_Coordinator(rejoining=True, _join_task=_Task(is_done=False)), False),  # in flight: the next poll awaits it
        (_Coordinator(rejoining=True, _join_task=_Task(is_done=True), rejoin_needed=True), False),  # taken next poll
        (_Coordinator(rejoining=False, _join_task=_Task(is_done=True)), False),  # taken already: in the group
        (_Coordinator(rejoining=True, _join_task=None), False),  # not sent yet
    ],
)
def test_only_a_finished_join_no_poll_will_take_is_asked_for_again(coordinator: _Coordinator, lost: bool):
    consumer = _Consumer(coordinator)
    assert lost_rejoin(consumer) is lost
    with capture_logs() as logs:
        assert revive_lost_rejoin(consumer, "test") is lost
    assert coordinator.rejoins_requested == int(lost)
    assert coordinator.need_rejoin() or not lost
    revived = ["consumer group join lost by the Kafka client: joining again"] if lost else []
    assert [entry["event"] for entry in logs] == revived


def test_a_client_without_that_state_is_left_alone():
    assert revive_lost_rejoin(object(), "test") is False
