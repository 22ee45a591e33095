"""A dead-letter read with Kafka down or frozen: one error of the application's (``DeadLettersUnreadable``, the
client's first line), within its connection bound, and no thread left behind (before: kafka-python's consumer
started its I/O thread, then raised from its constructor after 30 s; nothing stopped that thread, one per read).

No broker: nothing listens on a free port (down), or a socket listens and never answers (frozen)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from devtools.processes import free_port, wait_until
from shared.application.errors import DeadLettersUnreadable
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


@pytest.mark.parametrize("broker", ["down", "frozen"])
def test_failed_dead_letter_reads_raise_within_their_bound_and_leave_no_kafka_thread(broker: str) -> None:
    before = _kafka_threads()
    with _frozen_port() as frozen:
        port = free_port() if broker == "down" else frozen
        settings = CommonSettings(kafka_bootstrap_servers=f"127.0.0.1:{port}", metrics_port=0)
        for _ in range(READS):
            started = time.monotonic()
            with pytest.raises(DeadLettersUnreadable) as unreadable:
                KafkaDeadLetters(settings, connect_timeout=BOUND).dead_letters()
            assert time.monotonic() - started < BOUND + 4  # kafka-python's own 30 s before
            assert str(unreadable.value) == (
                f"the dead letters cannot be read now: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:{port}']"
            )
    # Closed on the failing path: its I/O thread joined (before: one kafka-io thread per failed read, for good).
    wait_until(lambda: _kafka_threads() == before, timeout=5, what=f"no kafka thread left (have {_kafka_threads()})")


def test_an_unreadable_reason_is_its_first_line_bounded() -> None:
    reason = DeadLettersUnreadable("KafkaError: " + "x" * 1000 + "\nsecond line").reason
    assert reason == ("KafkaError: " + "x" * 1000)[:300]
