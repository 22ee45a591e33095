"""Which of a round's batches the dispatcher begins, and when: a round bounded in time, whatever its size.

A round's batches are begun in :func:`admission_order` (the most urgent priority first, the round's order within a
priority: a new high-priority batch goes ahead of normal ones handed back by the last round) while the requests
begun and not finished (queued for a connection or in flight, retries included) stay within ``bound``; once the
round has run for ``deadline`` seconds, the batches not begun yet are handed back (the consumer loop holds them,
uncommitted, and hands them to the next round: no request of theirs was sent). A begun batch finishes normally. So
a round lasts at most ``deadline`` plus the time the requests begun by then take, at most ``bound`` of them (or one
batch of more, begun alone), whatever the number of records polled:
:attr:`services.dispatcher.settings.DispatcherSettings.max_poll_interval_ms` follows from it. Requests that go one at
a time (a profile's ``max_in_flight`` or rate) or wait out long timeouts may not fit that estimate: the round's end
bounds them (``round_end_seconds``: no attempt begins after it, the batch is handed back, :class:`RoundOver`).

Pure bookkeeping (the clock is given), driven by :meth:`services.dispatcher.dispatching.Dispatcher.handle_all`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.events import Priority
from shared.kafka.held_records import HoldRecord

#: Requests begun and not finished per round at most, in waves of ``concurrency``: enough queued behind the
#: connections that none idles between two records (a record's requests are begun together).
ADMITTED_WAVES = 16
#: ... and at least this many: two one-member records of the extractor's default 64 requests
#: (``EXPORT_EXTRACTOR_RECORD_MEMBERS``), so that the next record is queued while the last one's requests finish.
MIN_ADMITTED_REQUESTS = 128


def admitted_requests(concurrency: int) -> int:
    """The requests a round may have begun and not finished at once, with ``concurrency`` connections."""
    return max(ADMITTED_WAVES * concurrency, MIN_ADMITTED_REQUESTS)


#: Each priority's rank, the most urgent first (the order the dispatcher's topics are drained in).
PRIORITY_RANKS = {priority: rank for rank, priority in enumerate((Priority.HIGH, Priority.NORMAL, Priority.LOW))}


def admission_order(priorities: Sequence[Priority]) -> list[int]:
    """The positions of a round's batches (of ``priorities``) in the order they are offered to admission: the most
    urgent priority first, the round's order within a priority (a stable sort). The loop puts the batches handed
    back by the last round first, so they keep their place ahead of new batches of their priority, and the records
    of one partition (one topic, so one priority) keep theirs."""
    return sorted(range(len(priorities)), key=lambda position: PRIORITY_RANKS[priorities[position]])


class RoundOver(HoldRecord):
    """A batch whose request met its round's end before it was sent (waiting for a worker, a profile's slot or rate,
    or to retry): handed to the next round uncommitted, as a batch not begun is (never dead-lettered, no outcome). Its
    requests sent already may be sent again then (same Idempotency-Key), as after a stop."""

    def __init__(self, until: float) -> None:
        super().__init__("the round's end came before the batch's requests were sent: handed to the next round", until)


class Verdict(enum.Enum):
    """What to do with a round's next batch."""

    BEGIN = "begin"
    #: Too many requests begun and not finished: wait for some to finish (or the deadline).
    WAIT = "wait"
    #: The round's deadline has passed: this batch and those after it go to the next round.
    HAND_BACK = "hand back"


@dataclass
class RoundAdmission:
    """One round's admission: batches begun in order within ``bound`` requests, none begun after ``deadline``.

    The first batch is always begun (a round makes progress, however short its deadline), and so is a batch when
    nothing is outstanding (one of more than ``bound`` requests is begun alone). A batch's requests are counted
    from its beginning until each finishes (:meth:`request_done`, at most as many as were counted: a split's extra
    requests are not) or the batch ends (:meth:`batch_done`, whatever it did not report).
    """

    bound: int
    deadline: float
    started: float
    #: Requests begun and not finished.
    outstanding: int = 0
    #: Per begun batch (by its index in the round), its requests not reported finished yet.
    _open: dict[int, int] = field(default_factory=dict)
    #: Batches begun so far; they are the round's first ``begun`` (admission keeps the round's order).
    begun: int = 0
    handing_back: bool = False
    #: The requests of the batch waiting to begin (0: none waits).
    waiting: int = 0

    def verdict(self, requests: int, now: float) -> Verdict:
        """What to do with the next batch (``requests`` of them) at ``now``."""
        if self.handing_back or (self.begun and now - self.started >= self.deadline):
            self.handing_back = True  # once the deadline has passed, no batch of the round begins any more
            return Verdict.HAND_BACK
        if self._fits(requests):
            self.waiting = 0
            return Verdict.BEGIN
        self.waiting = requests
        return Verdict.WAIT

    def _fits(self, requests: int) -> bool:
        return self.outstanding == 0 or self.outstanding + requests <= self.bound

    @property
    def ready(self) -> bool:
        """Whether the batch waiting to begin now fits (the driver is woken then, not at every request)."""
        return self.waiting > 0 and self._fits(self.waiting)

    def seconds_left(self, now: float) -> float:
        """Seconds until the deadline (0 once passed)."""
        return max(0.0, self.started + self.deadline - now)

    def begin(self, requests: int) -> int:
        """Count the next batch (``requests`` of them) as begun; its index in the round."""
        index = self.begun
        count = max(0, requests)
        self._open[index] = count
        self.outstanding += count
        self.begun += 1
        return index

    def request_done(self, index: int) -> bool:
        """One of batch ``index``'s requests finished (beyond those counted at its beginning: ignored); whether the
        batch waiting to begin fits now (:attr:`ready`)."""
        left = self._open.get(index, 0)
        if left > 0:
            self._open[index] = left - 1
            self.outstanding -= 1
        return self.waiting > 0 and self._fits(self.waiting)

    def batch_done(self, index: int) -> bool:
        """Batch ``index`` ended: whatever it had not reported finished is no longer outstanding; whether the batch
        waiting to begin fits now (:attr:`ready`)."""
        self.outstanding -= self._open.pop(index, 0)
        return self.waiting > 0 and self._fits(self.waiting)
