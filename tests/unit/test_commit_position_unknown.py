"""A commit whose partition's next fetch is not known when it is made (session 46's review, two LOWs): kafka-python
has no position while an offset reset is in flight, and the loop's read of it (a private API) may fail. Either way
the commit waits for a later turn, once the position is known, and goes no further than it
(``ConsumerLoop._no_further_than_read``, ``_commit_deferred``): before, the first was dropped (an idle partition kept
its records uncommitted: lag above 0, handled again after a restart) and the second committed as asked (past records
read again, should the partition have been sought back).

The Kafka clients are the stand-ins of ``test_rounds_in_flight`` and ``test_rebalance_model``; nothing waits on time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from kafka.structs import TopicPartition

from devtools.processes import wait_until
from shared.events import RunRequested
from shared.kafka import Outgoing
from tests.unit import test_rebalance_model as model
from tests.unit import test_rounds_in_flight as stand_ins

P0, P1 = stand_ins.P0, stand_ins.P1
#: Turns the loop gets to commit what it settled (each polls once).
TURNS = 5


class ResettingConsumer(stand_ins.Consumer):
    """A consumer whose partitions may be awaiting an offset reset (kafka-python: no position) until its next poll,
    which resolves it where the partition was (the reset's answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.resetting: set[TopicPartition] = set()

    def next_fetch(self, partition: TopicPartition) -> int | None:
        return None if partition in self.resetting else super().next_fetch(partition)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self.resetting.clear()
        return super().poll(timeout_ms, max_records)


@pytest.mark.parametrize("rounds_in_flight", [1, 2], ids=["one-round", "2-in-flight"])
def test_a_commit_made_while_an_offset_reset_is_in_flight_is_made_once_the_position_is_known(rounds_in_flight: int):
    consumer, producer = ResettingConsumer(), stand_ins.Producer()
    consumer.add(P0, "a")
    handled: list[str] = []

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        handled.extend(model.record_name(request) for request in requests)
        consumer.resetting.add(P0)  # a fetch answered "offset out of range" meanwhile: P0 is reset
        return [stand_ins._outcome(request) for request in requests]

    loop = stand_ins._loop(consumer, producer, handle_round, rounds_in_flight)
    try:
        loop.poll_once()  # "a" polled (and handled, with one round at a time)
        if loop._window is not None:
            wait_until(
                lambda: all(p.results is not None and p.results.done() for p in loop._window or ()),
                timeout=stand_ins.DEADLINE_SECONDS,
                what="the round's handling",
            )
        for _ in range(TURNS):  # P0 idle: no later round commits it
            loop.poll_once()
        assert consumer.committed.get(P0) == 1  # its lag back to 0: "a" not handled again after a restart
        assert handled == ["a"]
        assert producer.outcomes() == ["a"]
    finally:
        if loop._window is not None:
            loop._window.close()


@pytest.mark.parametrize("rounds_in_flight", [2, 3], ids=["2-in-flight", "3-in-flight"])
def test_no_commit_passes_records_read_again_while_the_position_cannot_be_told(
    rounds_in_flight: int, monkeypatch: pytest.MonkeyPatch
):
    """The rebalance model's script (its steps: see ``Model.run``): round 1 holds "0:0" to "0:2" (due); a rebalance
    begins (their holds forgotten, P0 sought back to "0:0"); round 2 holds "0:3" meanwhile. P0 given back, its fetch
    from "0:0" late and its position unreadable, "0:3" (due) is settled alone: committed as asked, P0 went to 4, past
    "0:0" to "0:2", never produced (a crash, or a rebalance moving P0, then lost them). The commit waits for the
    position now, and goes no further than the records read again then."""
    model.check_strictly(
        [
            *[("append", 0, 1)] * 4,  # "0:0" to "0:3"
            ("turn",),  # round 1: "0:0" to "0:2"
            ("turn",),  # round 2: "0:3"
            ("release", 0, ("hold_due",)),  # round 1 holds its records, due at once
            ("rebalance begins",),
            ("turn",),  # round 1 sent (holds); the poll revokes: holds forgotten, P0 sought back to "0:0"
            ("release", 0, ("hold_due",)),  # round 2 holds "0:3"
            ("rebalance ends", (0, 1)),
            ("fetch late", 0, True),
            ("turn",),  # the poll gives P0 back at 0
            ("position unreadable", 0, True),
            ("turn",),  # "0:3" due: a round of its own
            ("release", 0, ("ok",)),
            ("turn",),  # "0:3" settled, P0's commit asked for 4; then the liveness check's turns
        ],
        rounds_in_flight,
        monkeypatch,
    )
