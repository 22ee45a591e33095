"""The dispatcher's requests, served in submission order by at most ``concurrency`` worker tasks.

Every request of every batch in flight (the rounds in flight share them) is queued in the order its batch submits
it, and taken from the front of the queue by one of at most ``concurrency`` workers, which sends it (rendering and
isolating splits included) and takes the next one: the earlier round's requests are served first, and no more than
``concurrency`` are ever being handled at once. What it replaces, a task per request waiting on a semaphore, cost a
task, its scheduling and a semaphore wait a request (README, "The one-member path").

:meth:`RequestWorkers.gather` is ``asyncio.gather``, except that it fails as an :class:`asyncio.TaskGroup` does
(what the dispatcher's batches were gathered with before): when one awaitable fails (a request held back by its
breaker), the others are cancelled (those not begun are dropped, those being handled cancelled where they wait)
and, once none of them runs any more, the first failure is raised as itself; when the caller is cancelled (the
dispatcher stopping), so are they, the same way.

A worker handles each request in the trace context of the batch that submitted it (its ``traceparent``, its
logs' trace ids): the only context a request reads. Workers live while there are requests queued; none lingers
between rounds, nor after its event loop. A request's own CancelledError (a future it awaited was cancelled, not its
worker) is its failure, raised by :meth:`RequestWorkers.gather` as a TaskGroup's caller met it, and the worker goes
on; a worker cancelled itself (its event loop ends) ends, even when its group cancelled its request at once.
A request must not itself wait on :meth:`RequestWorkers.gather` (it would wait for a worker while holding one).

A request that must wait for its profile (a ``max_in_flight`` slot, a rate token, a breaker's probe, a retry's backoff)
waits aside (:meth:`RequestWorkers.aside`): it gives its turn up while it waits, so the next request queued (another
profile's) is taken at once, and a slow or limited profile holds none of the ``concurrency`` turns that the others'
requests need. The fairness rule: a request back from its wait takes the next turn that frees, before any request
not begun (those back first go first); a turn is free when fewer than ``concurrency`` requests are being handled
(not waiting aside). So at most ``concurrency`` requests are ever handled at once, waits aside not counted, and no
request waits behind another profile's wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, Generic, TypeVar

from opentelemetry.context import Context

from shared.tracing import current_context, switch_to

T = TypeVar("T")


class _Group(Generic[T]):
    """One :meth:`RequestWorkers.gather`: its results, what is left of it, the workers handling its awaitables."""

    __slots__ = ("closed", "context", "done", "failure", "idle", "left", "results", "running")

    def __init__(self, count: int, done: asyncio.Future[None], context: Context) -> None:
        self.results: list[Any] = [None] * count
        self.left = count
        #: The workers handling one of its awaitables now.
        self.running: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        #: Done when every awaitable ended, or at the first failure.
        self.done = done
        #: Set when the last worker handling one of its awaitables is done with it, once it is closed.
        self.idle: asyncio.Future[None] | None = None
        #: Failed or abandoned: its awaitables not begun are dropped (and a later failure is not its first).
        self.closed = False
        #: The trace context its awaitables are handled in.
        self.context = context

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class RequestWorkers:
    """Awaitables (a dispatcher's requests) handled at most ``concurrency`` at a time, in submission order."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self._queue: deque[tuple[_Group[Any], int, Awaitable[Any]]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        #: Workers whose current awaitable its group cancelled (the worker goes on with the next one).
        self._cancelling: set[asyncio.Task[None]] = set()
        #: Turns held: requests being handled (not waiting aside), and workers about to take one (<= concurrency).
        self._turns = 0
        #: The requests back from a wait aside, waiting for a turn, in the order they came back.
        self._resuming: deque[asyncio.Future[None]] = deque()
        #: Workers holding no turn (their request's wait aside raised): they end with that request.
        self._turnless: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def busy(self) -> int:
        """Workers alive now (each handles one awaitable at a time)."""
        return len(self._workers)

    @property
    def queued(self) -> int:
        """Awaitables waiting for a worker."""
        return len(self._queue)

    @property
    def handled(self) -> int:
        """Turns held: awaitables being handled now, those waiting aside not counted (at most ``concurrency``)."""
        return self._turns

    async def gather(self, *awaitables: Awaitable[T]) -> list[T]:
        """The results of ``awaitables`` (coroutines), in their order, each handled by a worker in its turn (see
        the module for failures and cancellation)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per case): nothing of the last one is left
            self._loop, self._workers, self._cancelling = loop, set(), set()
            self._turns, self._resuming, self._turnless = 0, deque(), set()
            self._drop(lambda _: True)
        if not awaitables:
            return []
        group: _Group[T] = _Group(len(awaitables), loop.create_future(), current_context())
        self._queue.extend((group, index, awaitable) for index, awaitable in enumerate(awaitables))
        self._spawn(loop)
        try:
            await group.done
        except asyncio.CancelledError:
            await self._abandon(group)
            raise
        if group.failure is not None:
            await self._abandon(group)
            raise group.failure
        return group.results

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        queue = self._queue
        try:
            # It holds a turn: it takes the next request unless one back from a wait aside is due the turn first.
            while queue and not self._resuming and task not in self._turnless:
                group, index, awaitable = queue.popleft()
                if group.closed:  # failed meanwhile: what it had not begun is dropped
                    if isinstance(awaitable, Coroutine):
                        awaitable.close()
                    continue
                switch_to(group.context)
                group.running.add(task)
                try:
                    group.results[index] = await awaitable
                except asyncio.CancelledError as exc:
                    if task not in self._cancelling and task.cancelling() == 0:  # the awaitable's own (a future it
                        self._failed(group, exc)  # awaited was cancelled): its failure, raised as a TaskGroup did
                    self._ended(task, group)  # (a cancellation its group asked for spent)
                    if task.cancelling():  # the worker itself is cancelled (its event loop ends), even as its group
                        raise  # cancelled its awaitable: it begins no other one
                    continue
                except BaseException as exc:
                    self._failed(group, exc)
                    if not isinstance(exc, Exception):
                        self._ended(task, group)
                        raise
                self._ended(task, group)
        finally:
            self._workers.discard(task)
            if task in self._turnless:
                self._turnless.discard(task)
            else:  # its turn to the first request back from a wait, or to a new worker (none as its loop ends)
                self._release(spawn=task.cancelling() == 0)

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        """A worker for each free turn that a queued awaitable may take."""
        for _ in range(min(self.concurrency - self._turns, len(self._queue))):
            self._turns += 1
            self._workers.add(loop.create_task(self._work()))

    def _release(self, spawn: bool = True) -> None:
        """A turn given up: to the first request back from a wait aside, else to a new worker for the queue."""
        resuming = self._resuming
        while resuming:
            waiter = resuming.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the turn is the waiter's now: the count is unchanged
                return
        self._turns -= 1
        if spawn and self._queue and self._loop is not None:
            self._spawn(self._loop)

    async def aside(self, awaitable: Awaitable[T]) -> T:
        """``awaitable`` (a wait: a profile's slot, a rate token, a retry's backoff), awaited without holding a turn:
        the worker's turn goes to the next request meanwhile; the request goes on once a turn is free again, before
        any request not begun (the module's fairness rule). Awaited as is off a worker (nothing to give up). A wait
        that raises ends the request's turn: its request ends with the error (a hold, a round's end, a
        cancellation), and so does its worker, holding no turn."""
        task = asyncio.current_task()
        if task not in self._workers or task in self._turnless:
            return await awaitable
        self._release()
        try:
            result = await awaitable
        except BaseException:
            self._turnless.add(task)
            raise
        await self._turn(task)
        return result

    async def _turn(self, task: asyncio.Task[None]) -> None:
        """Take a turn for ``task``'s request back from a wait: at once when one is free and no other request back
        before it waits for one, else the next one that frees."""
        if self._turns < self.concurrency and not self._resuming:
            self._turns += 1
            return
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._resuming.append(waiter)
        try:
            await waiter
        except BaseException:  # cancelled waiting (its batch failed, the service stops): it holds no turn
            if waiter.done() and not waiter.cancelled():
                self._release()  # the turn came as it was cancelled: it goes to the next one
            elif waiter in self._resuming:
                self._resuming.remove(waiter)
            self._turnless.add(task)
            raise

    @staticmethod
    def _failed(group: _Group[Any], exc: BaseException) -> None:
        if not group.closed:  # the first failure: the group's other awaitables are cancelled
            group.failure, group.closed = exc, True
            group.finish()

    def _ended(self, task: asyncio.Task[None], group: _Group[Any]) -> None:
        """``task`` is done with one of ``group``'s awaitables (a cancellation of it, asked by the group, spent)."""
        group.running.discard(task)
        if task in self._cancelling:
            self._cancelling.discard(task)
            task.uncancel()
        group.left -= 1
        if group.left == 0:
            group.finish()
        if group.closed and not group.running and group.idle is not None and not group.idle.done():
            group.idle.set_result(None)

    async def _abandon(self, group: _Group[Any]) -> None:
        """Drop ``group``'s awaitables not begun, cancel those being handled, and wait until none is (a second
        cancellation of the caller meanwhile is raised once they are)."""
        group.closed = True
        self._drop(lambda queued: queued is group)
        for worker in group.running:
            if worker not in self._cancelling:
                self._cancelling.add(worker)
                worker.cancel()
        cancelled = False
        while group.running:
            group.idle = asyncio.get_running_loop().create_future()
            try:
                await group.idle
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _drop(self, of: Any) -> None:
        """Remove the queued awaitables whose group ``of`` accepts, closing them (never awaited, not warned of)."""
        kept: deque[tuple[_Group[Any], int, Awaitable[Any]]] = deque()
        for item in self._queue:
            if of(item[0]):
                if isinstance(item[2], Coroutine):
                    item[2].close()
            else:
                kept.append(item)
        self._queue.clear()
        self._queue.extend(kept)
