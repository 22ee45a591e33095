"""Records the extractor waits for, sent at once instead of after the producer's ``linger_ms``.

The extractor waits for the acknowledgement of almost everything it sends (a run's first records with its
``run.started``, each page's batches before the page's checkpoint, ``extraction.completed`` before the run is marked
done): nothing else would join the producer's batch while it lingers, so each wait paid ``linger_ms`` (5 ms) on top
of the broker's answer, three times a small run (a third of its start in a burst, measured by ``bench_burst_start``).
Here, waiting for records not acknowledged yet first flushes the producer: they leave at once. Records already
acknowledged are not flushed for: a large run's page N, waited for once page N+1 is sent, is acknowledged by then,
and its wait does not also wait for page N+1 (which is acknowledged while page N+2 is read). The producer is the
extractor's own, used by one thread: a flush holds up nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from shared.kafka import InFlight, Outgoing
from shared.kafka.clients import produce_timeout_seconds, send_record
from shared.tracing import current_kafka_headers


class FlushedInFlight(InFlight):
    """Records handed to the producer; :meth:`wait` sends them at once if they are not acknowledged yet, then
    returns once they are."""

    def __init__(self, producer: KafkaProducer, futures: list[Any]) -> None:
        super().__init__(futures, produce_timeout_seconds(producer))
        self._producer = producer

    def wait(self, timeout_seconds: float | None = None) -> None:
        """Flush the producer unless every record was answered already, then wait for every acknowledgement;
        raise the first failure. With ``timeout_seconds``, that long at most in all."""
        started = time.monotonic()
        flush = self._timeout_seconds if timeout_seconds is None else min(timeout_seconds, self._timeout_seconds)
        if not all(getattr(future, "is_done", False) for future in self._futures):
            with suppress(KafkaTimeoutError):  # the records' own futures say what became of them
                self._producer.flush(timeout=flush)
        if timeout_seconds is None:
            super().wait()
        else:
            super().wait(max(0.0, timeout_seconds - (time.monotonic() - started)))


def prompt_sends(producer: KafkaProducer) -> Callable[[list[Outgoing]], InFlight]:
    """A send for the extractor: ``shared.kafka.produce`` (each record with the current trace context unless it has
    its own), its records flushed when waited for before they were acknowledged (see the module's docstring)."""

    def send(outgoing: list[Outgoing]) -> InFlight:
        trace_headers = current_kafka_headers()
        return FlushedInFlight(producer, [send_record(producer, o, trace_headers) for o in outgoing])

    return send
