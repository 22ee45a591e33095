"""The whole consumer loop, in-process, over fuzzed polls: whatever a poll holds, ``poll_once`` returns, every
record's offset is committed, every record that does not decode is one dead letter under the broker's
record limit, and the others reach the handler. Both modes (one by one, and rounds).

The Kafka clients are stand-ins that behave as the broker does where it matters here: a record over
1 MiB is refused with ``MessageSizeTooLargeError`` when its acknowledgement is awaited.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import MessageSizeTooLargeError
from kafka.structs import TopicPartition

from services.extractor.run_request_decoding import decode_run_request
from shared.events import AnyRunRequest, DeadLetter, RunRequested
from shared.kafka import ConsumerLoop, Outgoing
from shared.kafka.loop import Rejection, decode_record
from tests.fuzz.records import run_request_record
from tests.fuzz.strategies import FUZZ, budgets, random_seeds

pytestmark = pytest.mark.fuzz

BROKER_MAX_BYTES = 1_048_576
TOPIC = "exports.run-requests"
#: Polls per mode (each of one to six records), 200 in CI and 1,000 in ``make fuzz``: a complement to the cases per
#: topic of the decoders.
CASES = budgets(200, 1_000)


class Acknowledgement:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class Producer:
    """Keeps what it was sent; refuses a record over 1 MiB as the broker does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> Acknowledgement:
        if len(value) + len(key) > BROKER_MAX_BYTES:
            return Acknowledgement(MessageSizeTooLargeError("the record is larger than the broker accepts"))
        self.sent.append((topic, key, value))
        return Acknowledgement(None)


class Consumer:
    """Hands out one poll, then nothing; remembers what was committed."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.polled: dict[TopicPartition, list[Any]] = {}
        for record in records:
            self.polled.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        self.committed: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        polled, self.polled = self.polled, {}
        for partition, records in polled.items():
            self.positions[partition] = records[-1].offset + 1
        return polled

    @property
    def _subscription(self) -> SimpleNamespace:
        """kafka-python's subscription state, as far as the loop reads it: a partition's next fetch, past its records
        polled (none before: read from the committed offset)."""

        def position(partition: TopicPartition) -> SimpleNamespace | None:
            at = self.positions.get(partition)
            return None if at is None else SimpleNamespace(offset=at)

        return SimpleNamespace(position=position)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed.update({partition: meta.offset for partition, meta in offsets.items()})


def _poll_of(seed: int) -> list[Any]:
    """One to six fuzzed run requests on two partitions, now and then a good one among them."""
    rng = random.Random(seed)
    records = []
    for offset in range(rng.randint(1, 6)):
        value: bytes | None
        headers: list[tuple[str, bytes]]
        if rng.random() < 0.2:
            value, headers, key = RunRequested(definition=f"good-{offset}").to_bytes(), [], None
        else:
            value, headers, key = run_request_record(rng.getrandbits(64))
        partition = rng.randint(0, 1)
        records.append(ConsumerRecord(TOPIC, partition, None, offset, 0, 0, key, value, headers, None, 0, 0, 0))
    return records


@pytest.mark.parametrize("polls", CASES)
@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_no_poll_stops_the_loop(rounds: bool, polls: int):
    cases = 0

    @settings(FUZZ, max_examples=polls)
    @given(seed=random_seeds)
    def fuzz(seed: int) -> None:
        nonlocal cases
        cases += 1
        records = _poll_of(seed)
        handled: list[str] = []

        def handler(request: AnyRunRequest) -> list[Outgoing]:
            handled.append(request.definition)
            if _refused(request.definition):
                # Now and then an outcome the broker refuses: the record is dead-lettered in its place.
                return [Outgoing("exports.run-events", "k", random.Random(seed).randbytes(BROKER_MAX_BYTES + 1))]
            return [Outgoing("exports.run-events", "k", b"{}")]

        def handle_round(requests: list[AnyRunRequest]) -> list[list[Outgoing] | BaseException]:
            return [handler(request) for request in requests]

        consumer, producer = Consumer(records), Producer()
        loop: ConsumerLoop[AnyRunRequest] = ConsumerLoop(
            service="fuzz",
            consumer=consumer,
            producer=producer,
            decode=decode_run_request,
            dead_letter_topic="exports.dead-letters",
            handler=None if rounds else handler,
            handle_round=handle_round if rounds else None,
            dead_letter_backoff_seconds=0,
        )
        assert loop.poll_once() == len(records)

        assert consumer.committed == {
            TopicPartition(TOPIC, partition): max(r.offset for r in records if r.partition == partition) + 1
            for partition in {r.partition for r in records}
        }
        letters = [
            DeadLetter.model_validate_json(v) for topic, _, v in producer.sent if topic == "exports.dead-letters"
        ]
        outcomes = [v for topic, _, v in producer.sent if topic == "exports.run-events"]
        rejected = sum(isinstance(decode_record(decode_run_request, r.value, r.headers), Rejection) for r in records)
        refused = sum(_refused(definition) for definition in handled)
        # Every record is accounted for once: its outcome produced, or one dead letter with the reason.
        assert len(handled) == len(records) - rejected
        assert len(outcomes) == len(handled) - refused
        assert len(letters) == rejected + refused
        assert len({letter.source_offset for letter in letters}) == len(letters)
        assert all(letter.reason and letter.source_topic == TOPIC for letter in letters)
        assert sum(letter.reason.startswith("its outcome could not be produced: ") for letter in letters) == refused

    fuzz()
    assert cases >= polls


def _refused(definition: str) -> bool:
    """Whether the handler answers ``definition`` with an outcome over the broker's limit."""
    return definition.startswith("good-") and int(definition[5:]) % 2 == 1
