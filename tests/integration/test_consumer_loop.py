"""The at-least-once consumer loop on a real broker: bad records are dead-lettered, the loop goes on."""

import hashlib
import json
import random
import time

import orjson
import pytest
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from services.extractor.run_request_decoding import decode_run_request
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE, DeadLetter, RunRequested
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.kafka.loop import DEAD_LETTER_PAYLOAD_BYTES
from shared.settings import CommonSettings
from tests.kafka_helpers import create_topic, produce, produce_with_headers, read_to_end, read_until

pytestmark = pytest.mark.integration


def _in_rounds(handler):
    """A round handler over ``handler``: each event's records, or the exception it raised."""

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        results: list[list[Outgoing] | BaseException] = []
        for event in events:
            try:
                results.append(handler(event))
            except Exception as exc:  # noqa: BLE001 - handed back to the loop, as gather(return_exceptions) does
                results.append(exc)
        return results

    return handle_round


def _loop(
    settings: CommonSettings,
    handler,
    group: str = "loop-test",
    rounds: bool = False,
    decode=None,
    service: str = "test",
    handle_round=None,
    rounds_in_flight: int = 1,
) -> ConsumerLoop[RunRequested]:
    topics = settings.topics
    if rounds and handle_round is None:
        handle_round = _in_rounds(handler)
    return ConsumerLoop(
        handle_round=handle_round,
        service=service,
        consumer=make_consumer(settings, settings.topic_prefix + group, [topics.run_requests]),
        producer=make_producer(settings, service),
        decode=decode or value_decoder(RunRequested.model_validate_json),
        handler=None if handle_round is not None else handler,
        dead_letter_topic=topics.dead_letters,
        dead_letter_backoff_seconds=0.05,
        rounds_in_flight=rounds_in_flight,
    )


def _run_until(loop: ConsumerLoop[RunRequested], condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "loop did not reach the expected state in time"
        loop.poll_once()


@pytest.mark.parametrize("rounds", [False, True])
def test_bad_records_are_dead_lettered_and_good_ones_handled(settings: CommonSettings, rounds: bool):
    ensure_topics(settings)
    topics = settings.topics
    handled: list[str] = []

    def handler(request: RunRequested) -> list[Outgoing]:
        if request.definition == "explodes":
            raise RuntimeError("boom")
        handled.append(request.definition)
        return [Outgoing(topics.run_events, str(request.run_id), b'{"echo": true}')]

    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [
            ("k1", b"this is not json"),
            ("k2", b'{"definition": 42}'),
            ("k3", RunRequested(definition="explodes").to_bytes()),
            ("k4", RunRequested(definition="fine").to_bytes()),
        ],
    )
    loop = _loop(settings, handler, rounds=rounds)
    _run_until(loop, lambda: handled == ["fine"])
    loop.consumer.close()

    letters = [
        DeadLetter.model_validate_json(v)
        for v in read_until(settings.kafka_bootstrap_servers, topics.dead_letters, lambda vs: len(vs) >= 3)
    ]
    reasons = {letter.payload: letter.reason for letter in letters}
    assert reasons["this is not json"].startswith("invalid event: ")
    assert reasons['{"definition": 42}'] == "invalid event: definition: Input should be a valid string"
    assert any(r == "RuntimeError: boom" for r in reasons.values())
    assert {letter.source_topic for letter in letters} == {topics.run_requests}
    assert all(letter.source_offset is not None for letter in letters)
    echoes = read_until(settings.kafka_bootstrap_servers, topics.run_events, lambda vs: len(vs) >= 1)
    assert json.loads(echoes[0]) == {"echo": True}


@pytest.mark.parametrize("rounds", [False, True])
def test_offsets_are_committed_only_for_processed_records(settings: CommonSettings, rounds: bool):
    ensure_topics(settings, [settings.topics.run_requests, settings.topics.dead_letters])
    topics = settings.topics
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [(f"k{i}", RunRequested(definition=f"d{i}").to_bytes()) for i in range(3)],
    )
    seen: list[str] = []

    def first_consumer(request: RunRequested) -> list[Outgoing]:
        seen.append(request.definition)
        return []

    loop = _loop(settings, first_consumer, rounds=rounds)
    _run_until(loop, lambda: len(seen) == 3)
    loop.consumer.close()

    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("k9", RunRequested(definition="d9").to_bytes())])
    later: list[str] = []

    def second_consumer(request: RunRequested) -> list[Outgoing]:
        later.append(request.definition)
        return []

    loop = _loop(settings, second_consumer, rounds=rounds)
    _run_until(loop, lambda: later == ["d9"])
    loop.consumer.close()
    assert sorted(seen) == ["d0", "d1", "d2"]


# --- poison records (issue 12, finding 2) --------------------------------------------------------------


def _close(loop: ConsumerLoop[RunRequested]) -> None:
    loop.consumer.close()
    loop.producer.close()


def _nested_json(depth: int) -> bytes:
    return b'{"definition": "nested", "parameters": {"deep": ' + b"[" * depth + b"]" * depth + b"}}"


def _cloudevent(data: bytes, **attributes: str) -> CloudEvent:
    return CloudEvent(
        attributes={"type": RUN_REQUESTED_CLOUDEVENT_TYPE, "source": "/crm", "id": "evt-1"} | attributes, data=data
    )


def _poison(kind: str) -> tuple[bytes, list[tuple[str, bytes]], str]:
    """A record that used to stop the consumer: value, headers, and what its dead letter's reason says."""
    if kind == "nested-cloudevent-structured":  # data_base64, which the decoder parsed with json.loads
        message = to_structured(_cloudevent(_nested_json(20_000), datacontenttype="application/json"), JSONFormat())
        return message.value, list(message.headers.items()), "recursion limit exceeded"
    if kind == "nested-cloudevent-binary":
        message = to_binary(_cloudevent(_nested_json(20_000), datacontenttype="text/plain"), JSONFormat())
        return message.value, list(message.headers.items()), "recursion limit exceeded"
    # ~900 KB of random bytes: as text (U+FFFD, escapes) its dead letter was 2 MB, over the broker's limit.
    return random.Random(12).randbytes(900_000), [], "invalid event: "


def _definitions_handler(handled: list[str]):
    def handler(request: RunRequested) -> list[Outgoing]:
        handled.append(request.definition)
        return []

    return handler


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
@pytest.mark.parametrize("kind", ["nested-cloudevent-structured", "nested-cloudevent-binary", "garbage-900kb"])
def test_a_poison_record_becomes_one_bounded_dead_letter_and_the_next_record_is_handled(
    settings: CommonSettings, kind: str, rounds: bool
):
    ensure_topics(settings)
    topics = settings.topics
    value, headers, reason = _poison(kind)
    good = RunRequested(definition="fine")
    # One key: the same partition, so the good record comes after the poison one.
    [(partition, poison_offset), _] = produce_with_headers(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("same-key", value, headers), ("same-key", good.to_bytes(), [])],
    )
    handled: list[str] = []
    loop = _loop(settings, _definitions_handler(handled), rounds=rounds, decode=decode_run_request)
    _run_until(loop, lambda: handled == ["fine"])
    committed = loop.consumer.committed(TopicPartition(topics.run_requests, partition))
    _close(loop)

    assert committed == poison_offset + 2  # both records done: the loop did not stop at the poison
    [raw] = read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters)
    letter = DeadLetter.model_validate_json(raw)
    assert reason in letter.reason
    assert letter.reason.startswith("invalid event: ")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topics.run_requests,
        partition,
        poison_offset,
    )
    assert letter.payload_size == len(value)
    assert letter.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.payload is not None
    assert len(orjson.dumps(letter.payload)) <= DEAD_LETTER_PAYLOAD_BYTES
    assert len(raw) < DEAD_LETTER_PAYLOAD_BYTES + 16 * 1024
    if kind == "garbage-900kb":
        assert letter.payload_truncated
    else:
        text = value.decode()
        assert text.startswith(letter.payload)
        assert letter.payload_truncated == (letter.payload != text)


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_a_record_whose_outcome_the_broker_refuses_is_dead_lettered_and_the_loop_goes_on(
    settings: CommonSettings, rounds: bool
):
    ensure_topics(settings)
    topics = settings.topics
    handled: list[str] = []

    def handler(request: RunRequested) -> list[Outgoing]:
        handled.append(request.definition)
        size = 2 * 1024 * 1024 if request.definition == "huge-outcome" else 10
        # Incompressible (the producer compresses): over the broker's 1 MiB, under the producer's 4 MiB.
        return [Outgoing(topics.run_events, str(request.run_id), random.Random(7).randbytes(size))]

    placed = produce_with_headers(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("k", RunRequested(definition=d).to_bytes(), []) for d in ("huge-outcome", "fine")],
    )
    loop = _loop(settings, handler, rounds=rounds)
    _run_until(loop, lambda: "fine" in handled)
    _close(loop)

    [letter] = _dead_letters(settings)
    assert letter.reason.startswith("its outcome could not be produced: MessageSizeTooLargeError")
    assert letter.source_offset == placed[0][1]
    assert [len(v) for v in read_to_end(settings.kafka_bootstrap_servers, topics.run_events)] == [10]


def test_a_round_handler_that_raises_dead_letters_its_records_and_the_loop_goes_on(settings: CommonSettings):
    ensure_topics(settings)
    topics = settings.topics
    handled: list[str] = []

    def handle_round(events: list[RunRequested]) -> list[list[Outgoing] | BaseException]:
        if any(event.definition == "breaks-the-round" for event in events):
            raise RuntimeError("the round broke")
        handled.extend(event.definition for event in events)
        return [[] for _ in events]

    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("k", RunRequested(definition="breaks-the-round").to_bytes())],
    )
    loop = _loop(settings, None, handle_round=handle_round)
    _run_until(loop, lambda: len(read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters)) >= 1)
    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("k", RunRequested(definition="fine").to_bytes())])
    _run_until(loop, lambda: handled == ["fine"])
    _close(loop)

    [letter] = _dead_letters(settings)
    assert letter.reason == "RuntimeError: the round broke"


def _dead_letters(settings: CommonSettings) -> list[DeadLetter]:
    return [
        DeadLetter.model_validate_json(v)
        for v in read_to_end(settings.kafka_bootstrap_servers, settings.topics.dead_letters)
    ]


def _failures(service: str) -> float:
    return REGISTRY.get_sample_value("member_export_consumer_dead_letter_failures_total", {"service": service}) or 0.0


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_a_dead_letter_too_large_for_its_topic_is_sent_again_without_its_payload(
    settings: CommonSettings, rounds: bool
):
    topics = settings.topics
    # The dead-letter topic takes records of at most 2,000 bytes: the letter carrying 10 KB of random bytes
    # is refused, the same letter without its payload (size and hash kept) fits.
    create_topic(settings.kafka_bootstrap_servers, topics.dead_letters, config={"max.message.bytes": "2000"})
    ensure_topics(settings)
    garbage = random.Random(3).randbytes(10_000)  # incompressible: the producer compresses
    service = f"refused-{rounds}"
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("k", garbage), ("k", RunRequested(definition="fine").to_bytes())],
    )
    handled: list[str] = []
    loop = _loop(settings, _definitions_handler(handled), rounds=rounds, service=service)
    _run_until(loop, lambda: handled == ["fine"])
    _close(loop)

    [letter] = _dead_letters(settings)
    assert letter.reason.startswith("invalid event: ")
    assert (letter.payload, letter.payload_truncated) == (None, True)
    assert (letter.payload_size, letter.payload_sha256) == (len(garbage), hashlib.sha256(garbage).hexdigest())
    assert _failures(service) == 0


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_a_dead_letter_that_cannot_be_produced_is_retried_then_counted_and_the_offset_moves_on(
    settings: CommonSettings, rounds: bool
):
    topics = settings.topics
    # No dead letter fits in 100 bytes: every attempt is refused by the broker.
    create_topic(settings.kafka_bootstrap_servers, topics.dead_letters, config={"max.message.bytes": "100"})
    ensure_topics(settings)
    service = f"unwritable-{rounds}"
    placed = produce_with_headers(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("k", b"not json", []), ("k", RunRequested(definition="fine").to_bytes(), [])],
    )
    handled: list[str] = []
    loop = _loop(settings, _definitions_handler(handled), rounds=rounds, service=service)
    attempts: list[int] = []
    send = loop.producer.send

    def counting_send(topic, **kwargs):
        if topic == topics.dead_letters:
            attempts.append(1)
        return send(topic, **kwargs)

    loop.producer.send = counting_send
    _run_until(loop, lambda: handled == ["fine"])
    partition, first_offset = placed[0]
    committed = loop.consumer.committed(TopicPartition(topics.run_requests, partition))
    _close(loop)

    assert committed == first_offset + 2  # the offset moved on past the record whose dead letter was lost
    assert len(attempts) == 3  # DEAD_LETTER_ATTEMPTS, the last two without the payload
    assert _failures(service) == 1
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []
