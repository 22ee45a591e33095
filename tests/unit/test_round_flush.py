"""A round's outcomes leave when the loop waits for them, not after the producer's ``linger_ms`` (issue 18).

With one round in flight the loop handles nothing while it waits for a round's acknowledgements: a producer that
holds the outcomes for its linger adds that linger to every round's pause. The producer here answers only once
flushed (a linger longer than the test), so the round is committed only if the loop flushes before it waits.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from devtools.processes import wait_until
from shared.events import RunRequested
from shared.kafka import Outgoing
from tests.unit.test_rounds_in_flight import P0, Consumer, Producer, _loop, _outcome

#: Far below any linger the test's producer would wait out (it never answers unflushed).
DEADLINE_SECONDS = 10.0


class LingeringProducer(Producer):
    """Holds every acknowledgement until it is flushed: a producer lingering longer than the test."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = threading.Event()
        self.flushes = 0

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        self.answer.set()


def test_a_rounds_outcomes_are_flushed_when_the_loop_waits_for_them_and_the_round_is_committed():
    consumer, producer = Consumer(), LingeringProducer()
    consumer.add(P0, "a", "b")

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=1)
    turn = threading.Thread(target=loop.poll_once, daemon=True)
    turn.start()
    try:
        wait_until(
            lambda: consumer.committed.get(P0) == 2,
            timeout=DEADLINE_SECONDS,
            what="the round committed (not waiting for acknowledgements its producer still holds)",
        )
    finally:
        producer.answer.set()  # the old code's turn waits for them: let it end
        turn.join(DEADLINE_SECONDS)
    assert producer.outcomes() == ["a", "b"]
    assert producer.flushes == 1  # once a round, not once a record


def test_a_round_whose_outcomes_are_answered_already_is_not_flushed():
    consumer, producer = Consumer(), LingeringProducer()
    producer.answer.set()  # the broker answered before the loop waits
    consumer.add(P0, "a")

    def handle_round(requests: Sequence[RunRequested]) -> list[list[Outgoing] | BaseException]:
        return [_outcome(request) for request in requests]

    loop = _loop(consumer, producer, handle_round, rounds_in_flight=1)
    loop.poll_once()
    assert consumer.committed == {P0: 1}
    assert producer.flushes == 0
