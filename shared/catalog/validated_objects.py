"""Catalog objects validated from their stored rows, kept by kind and id with the row's version and text (issue 18).

A burst's start reads the definitions of thousands of runs (and their queries and templates) at once; validating
each stored spec with pydantic is a good part of that read. The store keeps what it validated, under the row's
``version`` and its stored spec as text: a row read again with the same version and the same text is the same
object; otherwise it is validated again. The version alone does not say so: on SQLite (where ``FOR UPDATE`` locks
nothing) two edits at once both store the next version, and a data migration or ``exportctl secrets rotate``
rewrites a spec without raising it. Comparing the text read anyway costs little next to validating it. The row is
still read every time: a deleted object is not found, a changed one is never answered from its old copy.
Bounded, and resistant to bursts bigger than the bound: once full, the least recently used object makes room only
if it has not been used for ``idle_seconds``. So a burst of more objects than the bound keeps the first ``size`` it
read (and reuses them at its instant) instead of each object pushing out the one read just before it, which
would leave none to reuse; objects of bursts long past (deleted rows among them) still make room for new ones.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from shared.domain.catalog_objects import CatalogObject

#: Validated objects kept at most: a round's burst started together (``EXPORT_EXTRACTOR_START_BATCH``, 5,000 by
#: default) with their queries and templates, and a margin. About 6.5 KiB of memory each (an export definition as
#: ``bench_burst_start`` writes it, measured as RSS), and the stored text kept with it (756 characters, about 0.8 KiB,
#: for a definition with a daily schedule): some 45 MiB when full. A burst of more distinct definitions than this is
#: reused up to this many objects (see the module's docstring), the rest validated at its instant as before.
VALIDATED_OBJECTS = 6_000
#: Seconds an object must go unused before a new one may take its place in a full store: more than a burst takes
#: from its read-ahead to its start (seconds), less than the interval of most schedules.
IDLE_SECONDS = 600.0


@dataclass(slots=True)
class _Kept:
    version: int
    spec: str
    obj: CatalogObject
    used_at: float


class ValidatedObjects:
    """Validated objects by (kind, id), each with the version and stored text of the row it was validated from;
    thread-safe."""

    def __init__(
        self,
        size: int = VALIDATED_OBJECTS,
        *,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size, self.idle_seconds, self.clock = size, idle_seconds, clock
        self._objects: OrderedDict[tuple[str, str], _Kept] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, kind: str, object_id: str, version: int, spec: str) -> CatalogObject | None:
        """The object validated from row ``object_id`` of ``kind`` at ``version`` with stored text ``spec``; None
        when there is none kept."""
        with self._lock:
            kept = self._objects.get((kind, object_id))
            if kept is None or kept.version != version or kept.spec != spec:
                return None
            kept.used_at = self.clock()
            self._objects.move_to_end((kind, object_id))
            return kept.obj

    def put(self, kind: str, object_id: str, version: int, spec: str, obj: CatalogObject) -> None:
        """Keep ``obj`` as validated from row ``object_id`` of ``kind`` at ``version`` with stored text ``spec``
        (replacing the one kept before). In a full store it is kept only if the least recently used object has
        gone unused for ``idle_seconds`` (which then makes room): the objects of a burst in progress stay."""
        if self.size <= 0:
            return
        key, now = (kind, object_id), self.clock()
        with self._lock:
            if key not in self._objects and len(self._objects) >= self.size:
                oldest = next(iter(self._objects.values()))
                if now - oldest.used_at < self.idle_seconds:
                    return  # every object kept is in use: this one is validated again when next read
                self._objects.popitem(last=False)
            self._objects[key] = _Kept(version, spec, obj, now)
            self._objects.move_to_end(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
