"""The at-least-once consumer loop on a real broker: bad records are dead-lettered, the loop goes on."""

import json

import pytest

from shared.events import DeadLetter, RunRequested
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, value_decoder
from shared.settings import CommonSettings
from tests.kafka_helpers import produce, read_until

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
    settings: CommonSettings, handler, group: str = "loop-test", rounds: bool = False
) -> ConsumerLoop[RunRequested]:
    topics = settings.topics
    return ConsumerLoop(
        handle_round=_in_rounds(handler) if rounds else None,
        service="test",
        consumer=make_consumer(settings, settings.topic_prefix + group, [topics.run_requests]),
        producer=make_producer(settings, "test"),
        decode=value_decoder(RunRequested.model_validate_json),
        handler=None if rounds else handler,
        dead_letter_topic=topics.dead_letters,
    )


def _run_until(loop: ConsumerLoop[RunRequested], condition, timeout: float = 60.0) -> None:
    import time

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
