"""A bounded cache of the statements a reader builds around saved queries, compiled once for its engine.

Building and compiling the keyset and member-JSON statements around a saved query costs a few milliseconds
(SQLAlchemy constructs, compiled to the driver's SQL), about as long as reading a page of a few members: a burst
of small runs paid it once a run. A statement is a pure function of what its key holds (the query's checked SQL,
its key column, its result columns and their driver types, the window's column, whether the run is bounded...),
so a query edited, or a store whose columns changed, has a key of its own and is built afresh: the cache can
only spare work, never change what is read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

#: Statements kept at most (the least recently used is dropped): a few per saved query read.
DEFAULT_MAX_ENTRIES = 256


class StatementCache(Generic[V]):
    """Values by key, built by the caller on a miss, at most ``max_entries`` kept (least recently used dropped)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        # Pages are read on a thread of their own (MemberPages): the cache may be used from two threads.
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value cached for ``key``, or ``build()`` (cached). ``build`` runs outside the lock; two threads
        missing at once both build, and either's value is kept (they are equal)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
