"""The Kafka event publisher's failure detail and its one bound on a publication (handing the records to the
producer, then waiting for their acknowledgement), with a stand-in producer and clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from shared.application.errors import PublishFailed
from shared.kafka.event_publisher import KafkaEventPublisher
from shared.kafka.records import Outgoing
from shared.topics import Topics

TOPICS = Topics(prefix="t.")
RECORD = [Outgoing(TOPICS.run_requests, "k", b"{}", ())]


def _failing(exc: Exception) -> KafkaEventPublisher:
    def send(outgoing: list[Outgoing]) -> None:
        raise exc

    return KafkaEventPublisher(send, TOPICS)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            KafkaTimeoutError("Failed to update metadata after 10.0 secs."),
            "KafkaTimeoutError: Failed to update metadata after 10.0 secs.",
        ),
        (KafkaTimeoutError(), "KafkaTimeoutError"),
        (KafkaConnectionError("no broker"), "KafkaConnectionError: no broker"),
    ],
)
def test_a_failure_names_the_client_error_class_once(exc: Exception, reason: str) -> None:
    """kafka-python's errors start their message with their class: it is not repeated (before: ``KafkaTimeoutError:
    KafkaTimeoutError: …``)."""
    with pytest.raises(PublishFailed) as raised:
        _failing(exc).send(RECORD, "the run request")
    assert raised.value.reason == reason
    assert raised.value.what == f"the run request on {TOPICS.run_requests}"


@given(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), max_size=80))
def test_the_class_is_named_once_whatever_the_message(message: str) -> None:
    with pytest.raises(PublishFailed) as raised:
        _failing(KafkaTimeoutError(message)).send(RECORD, "x")
    assert raised.value.reason.startswith("KafkaTimeoutError")
    assert not raised.value.reason.startswith("KafkaTimeoutError: KafkaTimeoutError")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Future:
    def __init__(self, waits: list[float]) -> None:
        self.waits = waits

    def get(self, timeout: float | None = None) -> None:
        assert timeout is not None
        self.waits.append(timeout)


class _SlowSendProducer:
    """``send()`` takes ``blocked`` seconds of the stand-in clock (kafka-python waiting for a topic's metadata)."""

    config: dict[str, Any] = {"delivery_timeout_ms": 120_000}

    def __init__(self, clock: _Clock, blocked: float) -> None:
        self.clock, self.blocked, self.waits = clock, blocked, list[float]()

    def send(self, topic: str, **kwargs: Any) -> _Future:
        self.clock.now += self.blocked
        return _Future(self.waits)


@pytest.mark.parametrize(("blocked", "left"), [(0.0, 15.0), (9.0, 6.0), (20.0, 0.0)])
def test_the_wait_for_acknowledgement_is_what_is_left_of_the_bound_after_the_send(
    monkeypatch: pytest.MonkeyPatch, blocked: float, left: float
) -> None:
    """One deadline for handing the records over and waiting for them (before: the full wait after the send)."""
    clock = _Clock()
    monkeypatch.setattr("shared.kafka.event_publisher.time.monotonic", clock)
    producer = _SlowSendProducer(clock, blocked)
    KafkaEventPublisher.over(producer, TOPICS, 15.0).send(RECORD, "the run request")
    assert producer.waits == [pytest.approx(left)]


class _RefusingProducer:
    """``send()`` raises before taking the record, as kafka-python does when a topic's metadata does not come
    within ``max_block_ms``."""

    config: dict[str, Any] = {"delivery_timeout_ms": 120_000}

    def send(self, topic: str, **kwargs: Any) -> _Future:
        raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")


@pytest.mark.parametrize("wait_seconds", [15.0, None])
def test_a_record_the_producer_refused_before_taking_it_is_known_not_published(wait_seconds: float | None) -> None:
    """Nothing reached a broker: the run request is said not published, not of unknown outcome (before: unknown)."""
    with pytest.raises(PublishFailed) as raised:
        KafkaEventPublisher.over(_RefusingProducer(), TOPICS, wait_seconds).send(RECORD, "the run request")
    assert raised.value.unknown is False
    assert raised.value.reason == "KafkaTimeoutError: Failed to update metadata after 10.0 secs."


def test_a_failure_while_waiting_for_the_acknowledgement_is_of_unknown_outcome() -> None:
    with pytest.raises(PublishFailed) as raised:
        _failing(KafkaTimeoutError("Expiring 1 record(s)")).send(RECORD, "the run request")
    assert raised.value.unknown is True
