"""Records the extractor waits for, sent at once instead of after the producer's ``linger_ms``.

The extractor waits for the acknowledgement of almost everything it sends (a run's ``run.started``, each page's
batches before the page's checkpoint, ``extraction.completed`` before the run is marked done): nothing else would
join the producer's batch while it lingers, so each wait paid ``linger_ms`` (5 ms) on top of the broker's answer,
three times a small run (a third of its start in a burst, measured by ``bench_burst_start``). Here, waiting first
flushes the producer: the records leave at once. The producer is the extractor's own, used by one thread: a flush
holds up nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from shared.kafka import InFlight, Outgoing
from shared.kafka.clients import produce_timeout_seconds


class FlushedInFlight(InFlight):
    """Records handed to the producer; :meth:`wait` sends them at once, then returns once they are acknowledged."""

    def __init__(self, producer: KafkaProducer, sent: InFlight) -> None:
        super().__init__([], produce_timeout_seconds(producer))
        self._producer, self._sent = producer, sent

    def wait(self) -> None:
        """Flush the producer, then wait for every record's acknowledgement; raise the first failure."""
        with suppress(KafkaTimeoutError):  # the records' own futures say what became of them
            self._producer.flush(timeout=self._timeout_seconds)
        self._sent.wait()


def prompt_sends(
    producer: KafkaProducer, send: Callable[[list[Outgoing]], InFlight]
) -> Callable[[list[Outgoing]], InFlight]:
    """``send``, its records flushed when waited for (see the module's docstring)."""
    return lambda outgoing: FlushedInFlight(producer, send(outgoing))
