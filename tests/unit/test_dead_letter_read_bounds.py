"""A dead-letter read with Kafka down or frozen: one error of the application's (``DeadLettersUnreadable``, the
client's first line), within its connection bound, and no thread left behind (before: kafka-python's consumer
started its I/O thread, then raised from its constructor after 30 s; nothing stopped that thread, one per read).

No broker: nothing listens on a free port (down), or a socket listens and never answers (frozen)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.structs import TopicPartition

from devtools.processes import free_port, wait_until
from shared.application.errors import DeadLettersUnreadable
from shared.kafka import clients, event_publisher
from shared.kafka.clients import READ_TIMEOUT_SECONDS
from shared.kafka.event_publisher import KafkaDeadLetters
from shared.settings import CommonSettings

READS = 3
BOUND = 1.0


def _kafka_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("kafka-")]


@contextmanager
def _frozen_port() -> Iterator[int]:
    """A port whose socket takes connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("read", ["whole", "versioned"])
@pytest.mark.parametrize("broker", ["down", "frozen"])
def test_failed_dead_letter_reads_raise_within_their_bound_and_leave_no_kafka_thread(broker: str, read: str) -> None:
    """The admin's listings read the topic's version first (``dead_letters_unless``): bounded as a whole read."""
    before = _kafka_threads()
    with _frozen_port() as frozen:
        port = free_port() if broker == "down" else frozen
        settings = CommonSettings(kafka_bootstrap_servers=f"127.0.0.1:{port}", metrics_port=0)
        for _ in range(READS):
            started = time.monotonic()
            source = KafkaDeadLetters(settings, connect_timeout=BOUND)
            with pytest.raises(DeadLettersUnreadable) as unreadable:
                source.dead_letters() if read == "whole" else source.dead_letters_unless(lambda version: True)
            assert time.monotonic() - started < BOUND + 4  # kafka-python's own 30 s before
            assert str(unreadable.value) == (
                f"the dead letters cannot be read now: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:{port}']"
            )
    # Closed on the failing path: its I/O thread joined (before: one kafka-io thread per failed read, for good).
    wait_until(lambda: _kafka_threads() == before, timeout=5, what=f"no kafka thread left (have {_kafka_threads()})")


def test_an_unreadable_reason_is_its_first_line_bounded() -> None:
    reason = DeadLettersUnreadable("KafkaError: " + "x" * 1000 + "\nsecond line").reason
    assert reason == ("KafkaError: " + "x" * 1000)[:300]


class _Clock:
    """A monotonic clock that only the stub consumer moves: each of its steps takes the whole time it is given."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout_ms: float | None) -> None:
        assert timeout_ms is not None, "a step of the read waited without a bound"
        self.now += timeout_ms / 1000


#: The id the stub's broker gives its topic.
_TOPIC_ID = "6f1c0d2e-1b7a-4c55-9d3e-2a4b5c6d7e8f"


class _StubConsumer:
    """A consumer of a one-partition topic whose broker froze after answering ``end_offsets`` (1 record)."""

    def __init__(self, clock: _Clock, connect_timeout: float, position: int | None) -> None:
        self.clock, self.connect_timeout, self.answer = clock, connect_timeout, position
        self.closed = False
        # kafka-python's private cluster metadata, as shared.kafka.clients.topic_id reads it.
        self._client = SimpleNamespace(cluster=SimpleNamespace(topic_id=lambda topic: uuid.UUID(_TOPIC_ID)))
        clock.wait(connect_timeout * 1000)  # the bootstrap, its whole bound

    def partitions_for_topic(self, topic: str) -> set[int]:
        self.clock.wait(self.connect_timeout * 1000)  # the metadata request, bounded by request_timeout_ms
        return {0}

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def seek_to_beginning(self) -> None:
        pass

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        self.clock.wait(timeout_ms)
        return dict.fromkeys(partitions, 1)

    def beginning_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        self.clock.wait(timeout_ms)
        return dict.fromkeys(partitions, 0)

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        self.clock.wait(timeout_ms)  # the offset reset timed out: kafka-python 3 gives None, or the old position
        return self.answer

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self.clock.wait(timeout_ms)
        return {}

    def close(self, timeout_ms: int | None = None) -> None:
        self.clock.wait(timeout_ms)
        self.closed = True


def _stub(monkeypatch: pytest.MonkeyPatch, position: int | None) -> tuple[_Clock, list[_StubConsumer]]:
    clock, made = _Clock(), []

    def consumer(settings: CommonSettings, connect_timeout: float) -> _StubConsumer:
        made.append(_StubConsumer(clock, connect_timeout, position))
        return made[-1]

    monkeypatch.setattr(clients, "time", SimpleNamespace(monotonic=clock))  # this module's clock only
    monkeypatch.setattr(clients, "_whole_topic_consumer", consumer)
    return clock, made


def test_a_position_kafka_could_not_reset_in_time_is_unreadable_not_a_type_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: ``None < 1`` raised TypeError (API 500, exportctl exit 1) where the dead letters are unreadable."""
    _, made = _stub(monkeypatch, position=None)
    settings = CommonSettings(metrics_port=0)
    with pytest.raises(DeadLettersUnreadable) as unreadable:
        KafkaDeadLetters(settings, connect_timeout=10).dead_letters()
    assert str(unreadable.value) == (
        "the dead letters cannot be read now: KafkaTimeoutError: the position in "
        f"{settings.topics.dead_letters}-0 was not known within 10.0 s"
    )
    assert made[0].closed


@pytest.mark.parametrize("timeout", [20.0, 30.0, 60.0])
def test_a_whole_read_ends_within_its_one_deadline_however_its_steps_time_out(
    monkeypatch: pytest.MonkeyPatch, timeout: float
) -> None:
    """Every step of a frozen broker's read takes all it is given; the read still ends at its deadline (before: each
    step had 10 s of its own and the deadline was checked between them, about 100 s for a 60 s read)."""
    clock, made = _stub(monkeypatch, position=0)
    started = clock.now
    with pytest.raises(TimeoutError, match=rf"could not read dead to its end within {timeout:.0f} s"):
        clients.read_whole_topic(CommonSettings(metrics_port=0), "dead", timeout=timeout, connect_timeout=10)
    assert clock.now - started <= timeout
    assert made[0].closed


@pytest.mark.parametrize("timeout", [20.0, 30.0, 60.0])
def test_a_versioned_read_ends_within_its_one_deadline_however_its_steps_time_out(
    monkeypatch: pytest.MonkeyPatch, timeout: float
) -> None:
    """The version's requests (the bootstrap, the metadata, the end and first offsets) and the read after it share
    the one deadline: a frozen broker ends the whole within ``timeout``, not the version's steps and then a read's."""
    clock, made = _stub(monkeypatch, position=0)
    started = clock.now
    with pytest.raises(TimeoutError, match=rf"could not read dead to its end within {timeout:.0f} s"):
        clients.read_topic_unless(
            CommonSettings(metrics_port=0), "dead", lambda version: False, timeout=timeout, connect_timeout=10
        )
    assert clock.now - started <= timeout
    assert made[0].closed


def test_a_known_version_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``known`` says its caller holds is not polled: the version and None."""
    _, made = _stub(monkeypatch, position=0)
    asked: list[object] = []

    def known(version: object) -> bool:
        asked.append(version)
        return True

    assert clients.read_topic_unless(CommonSettings(metrics_port=0), "dead", known, connect_timeout=10) == (
        (_TOPIC_ID, ((0, 0, 1),)),
        None,
    )
    assert asked == [(_TOPIC_ID, ((0, 0, 1),))]
    assert made[0].closed


def _raises(error: Exception) -> Any:
    def topic_id(topic: str) -> None:
        raise error

    return topic_id


@pytest.mark.parametrize(
    "cluster",
    [
        SimpleNamespace(topic_id=lambda topic: None),
        SimpleNamespace(),
        # kafka-python's private API changed otherwise: its errors are no version too (before: they escaped the read).
        SimpleNamespace(topic_id=_raises(TypeError("topic_id() takes 1 positional argument"))),
        SimpleNamespace(topic_id=_raises(KeyError("dead"))),
    ],
)
def test_a_topic_without_an_id_has_no_version_and_is_read(monkeypatch: pytest.MonkeyPatch, cluster: Any) -> None:
    """A broker naming no topic id (or a kafka-python keeping it elsewhere): no version (nothing can be kept by it),
    ``known`` not asked, the records read (before: a version of offsets only, which a topic deleted and created
    again may give again)."""
    _, made = _stub(monkeypatch, position=1)
    asked: list[object] = []

    def known(version: object) -> bool:
        asked.append(version)
        return True

    def no_id(settings: CommonSettings, connect_timeout: float) -> _StubConsumer:
        consumer = _StubConsumer(_Clock(), connect_timeout, 1)
        consumer._client = SimpleNamespace(cluster=cluster)
        made.append(consumer)
        return consumer

    monkeypatch.setattr(clients, "_whole_topic_consumer", no_id)
    assert clients.read_topic_unless(CommonSettings(metrics_port=0), "dead", known, connect_timeout=10) == (None, [])
    assert asked == []
    assert made[-1].closed


def test_a_read_after_another_for_the_same_answer_has_what_that_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """``spent`` seconds taken from the read's 60 s (before: each read 60 s of its own); none left: unreadable at
    once, Kafka not asked."""
    asked: list[float] = []

    def read_topic_unless(settings: Any, topic: str, known: Any, timeout: float, **bounds: float) -> Any:
        asked.append(timeout)
        return None, []

    monkeypatch.setattr(event_publisher, "read_topic_unless", read_topic_unless)
    source = KafkaDeadLetters(CommonSettings(kafka_bootstrap_servers="127.0.0.1:1", metrics_port=0))
    assert source.dead_letters_unless(lambda version: False) == (None, [])
    assert source.dead_letters_unless(lambda version: False, spent=45.0) == (None, [])
    assert asked == [60.0, 15.0]
    with pytest.raises(DeadLettersUnreadable) as unreadable:
        source.dead_letters_unless(lambda version: False, spent=60.0)
    assert str(unreadable.value) == (
        "the dead letters cannot be read now: TimeoutError: could not read exports.dead-letters to its end within 60 s"
    )
    assert asked == [60.0, 15.0]


@pytest.mark.parametrize("spent", [30.0, 50.0, 55.0])
def test_a_read_again_of_a_frozen_broker_ends_within_the_calls_60_s(
    monkeypatch: pytest.MonkeyPatch, spent: float
) -> None:
    """The version read took ``spent`` of the call's 60 s and the read again finds the broker frozen, each step of it
    taking all it is given: the call's Kafka reads end within 60 s, the error naming those 60 s (before: its bootstrap
    and metadata request took 10 s each whatever was left, 10 s past the bound at 55 s spent, the error naming the
    5 s left)."""
    clock, made = _stub(monkeypatch, position=0)
    source = KafkaDeadLetters(CommonSettings(metrics_port=0), connect_timeout=10)
    started = clock.now
    with pytest.raises(DeadLettersUnreadable) as unreadable:
        source.dead_letters_unless(lambda version: False, spent=spent)
    assert spent + (clock.now - started) <= READ_TIMEOUT_SECONDS
    assert str(unreadable.value) == (
        "the dead letters cannot be read now: TimeoutError: could not read exports.dead-letters to its end within 60 s"
    )
    assert made[0].closed
