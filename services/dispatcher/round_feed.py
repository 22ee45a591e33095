"""A round's batches handed to the event loop as the consumer loop decodes them (issue 18).

Decoding a poll's records (pydantic, about 0.35-0.5 ms of CPU a 500-member record, more in wall time on a busy
machine) took a quarter of a batch run's time while no request was in flight: the round's first request waited
for its last record to be decoded. With a feed, the consumer loop hands the round's batches over a few at a time
(:class:`shared.kafka.records.RoundStream`) and the dispatcher begins the first while the rest are decoded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context

from services.dispatcher.wakeup import Wakeup
from shared.events import MemberBatch
from shared.kafka.records import Round, round_contexts

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from shared.kafka.loop import ConsumerLoop


class RoundFeed:
    """One round's batches, in the order they are to be offered to admission, as they come (event loop side:
    every method runs on the dispatcher's event loop)."""

    def __init__(self) -> None:
        self._batches: list[tuple[MemberBatch, Context | None]] = []
        #: No batch will be added any more: the round holds ``len(self)`` batches.
        self.closed = False
        self._changed = Wakeup()

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, batches: Sequence[MemberBatch], contexts: Sequence[Context | None]) -> None:
        self._batches.extend(zip(batches, contexts, strict=True))
        self._changed.notify()

    def close(self) -> None:
        self.closed = True
        self._changed.notify()

    def get(self, index: int) -> tuple[MemberBatch, Context | None] | None:
        """The ``index``-th batch and its trace context, or None when it has not come (yet)."""
        return self._batches[index] if index < len(self._batches) else None

    async def wait(self, timeout: float) -> None:
        """Return when batches were added or the feed closed, or after ``timeout`` seconds."""
        await self._changed.wait(timeout)

    @classmethod
    def of(cls, batches: Sequence[MemberBatch], contexts: Sequence[Context | None]) -> RoundFeed:
        """A feed holding ``batches`` (closed: nothing more comes)."""
        feed = cls()
        feed.add(batches, contexts)
        feed.close()
        return feed


class PortalRoundStream:
    """The consumer loop's side of a round fed to the dispatcher (:class:`shared.kafka.records.RoundStream`): its
    batches go to the event loop behind an anyio blocking ``portal`` as they are decoded, where ``handle_feed``
    (:meth:`services.dispatcher.dispatching.Dispatcher.handle_feed`) begins them; :meth:`close` waits for its
    results, in the order the batches were added."""

    def __init__(self, portal: Any, handle_feed: Any) -> None:
        self._portal = portal
        self._feed = RoundFeed()
        self._results = portal.start_task_soon(handle_feed, self._feed)

    def add(self, events: Round[MemberBatch]) -> None:
        self._portal.call(self._feed.add, list(events), list(round_contexts(events)))

    def close(self) -> Sequence[list[Any] | BaseException]:
        self._portal.call(self._feed.close)
        results: Sequence[list[Any] | BaseException] = self._results.result()
        return results


def feed_rounds(
    loop: ConsumerLoop[MemberBatch],
    portal: BlockingPortal,
    handle_feed: Callable[[RoundFeed], Awaitable[Sequence[list[Any] | BaseException]]],
    records: int,
) -> None:
    """Have ``loop`` hand its rounds to ``handle_feed`` (the dispatcher's, on ``portal``'s event loop) ``records``
    batches at a time as it decodes them (``ConsumerLoop.round_stream``), so that the first requests begin while the
    rest are decoded."""
    loop.round_stream = lambda: PortalRoundStream(portal, handle_feed)
    loop.stream_records = records
