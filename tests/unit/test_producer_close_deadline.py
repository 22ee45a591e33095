"""``close_producer`` keeps one deadline for every record it waits for (kafka-python's ``flush(timeout)`` waits its
timeout for each batch in turn: a batch acknowledged late, then one never acknowledged, took about twice the bound)."""

from __future__ import annotations

import threading
import time

from kafka.errors import KafkaTimeoutError

from shared.kafka.clients import close_producer


class _Batch:
    def __init__(self, acknowledged_after: float | None) -> None:
        self.record_count = 1
        self.done = threading.Event()
        if acknowledged_after is not None:
            threading.Timer(acknowledged_after, self.done.set).start()


class _Incomplete:
    def __init__(self, batches: list[_Batch]) -> None:
        self.batches = batches

    def all(self) -> list[_Batch]:
        return [batch for batch in self.batches if not batch.done.is_set()]


class _Accumulator:
    def __init__(self, batches: list[_Batch]) -> None:
        self._incomplete = _Incomplete(batches)


class _Sender:
    def __init__(self, batches: list[_Batch]) -> None:
        self.batches = batches
        self.forced = False

    def force_close(self) -> None:  # kafka-python's: every record it holds failed at once
        self.forced = True
        for batch in self.batches:
            batch.done.set()


class _Producer:
    """kafka-python 3.0.12's producer as the close sees it: ``flush(timeout)`` waits ``timeout`` for each batch."""

    def __init__(self, batches: list[_Batch]) -> None:
        self.batches = batches
        self._accumulator = _Accumulator(batches)
        self._sender = _Sender(batches)
        self.closed = False

    def flush(self, timeout: float | None = None) -> None:
        for batch in list(self.batches):
            if not batch.done.wait(timeout):
                raise KafkaTimeoutError("Timeout waiting for future")

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_a_late_acknowledgement_then_none_is_waited_for_once_not_per_batch():
    late, never = _Batch(acknowledged_after=2.5), _Batch(acknowledged_after=None)
    producer = _Producer([late, never])
    started = time.monotonic()
    abandoned = close_producer(producer, timeout_seconds=4.0)
    took = time.monotonic() - started
    # Given 3 s (4 less the second the I/O thread gets to end): per batch it waited 2.5 + 3 s.
    assert took < 4.0, f"the close took {took:.1f} s"
    assert producer._sender.forced
    assert producer.closed
    assert abandoned == 1  # the late one was acknowledged in time; the other abandoned


def test_records_acknowledged_in_time_are_not_abandoned():
    producer = _Producer([_Batch(acknowledged_after=0.1), _Batch(acknowledged_after=0.2)])
    assert close_producer(producer, timeout_seconds=4.0) == 0
    assert not producer._sender.forced
    assert producer.closed
