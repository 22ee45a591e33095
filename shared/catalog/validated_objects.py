"""Catalog objects validated from their stored rows, kept by kind and id with the row's version and text (issue 18).

A burst's start reads the definitions of thousands of runs (and their queries and templates) at once; validating
each stored spec with pydantic is a good part of that read. The store keeps what it validated, under the row's
``version`` and its stored spec as text: a row read again with the same version and the same text is the same
object; otherwise it is validated again. The version alone does not say so: on SQLite (where ``FOR UPDATE`` locks
nothing) two edits at once both store the next version, and a data migration or ``exportctl secrets rotate``
rewrites a spec without raising it. Comparing the text read anyway costs little next to validating it. The row is
still read every time: a deleted object is not found, a changed one is never answered from its old copy.
Bounded: the objects least recently used go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from shared.domain.catalog_objects import CatalogObject

#: Validated objects kept at most: a round's burst started together (``EXPORT_EXTRACTOR_START_BATCH``, 5,000 by
#: default) with their queries and templates, and a margin. About 6.5 KiB of memory each (an export definition as
#: ``bench_burst_start`` writes it, measured as RSS), and the stored text kept with it (756 characters, about 0.8 KiB,
#: for a definition with a daily schedule): some 45 MiB when full. A burst of more distinct definitions than this is
#: validated at its instant as before (the least recently used gone first, every one is missed).
VALIDATED_OBJECTS = 6_000


class ValidatedObjects:
    """Validated objects by (kind, id), each with the version and stored text of the row it was validated from;
    thread-safe."""

    def __init__(self, size: int = VALIDATED_OBJECTS) -> None:
        self.size = size
        self._objects: OrderedDict[tuple[str, str], tuple[int, str, CatalogObject]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, object_id: str, version: int, spec: str) -> CatalogObject | None:
        """The object validated from row ``object_id`` of ``kind`` at ``version`` with stored text ``spec``; None
        when there is none kept."""
        with self._lock:
            kept = self._objects.get((kind, object_id))
            if kept is None or kept[0] != version or kept[1] != spec:
                return None
            self._objects.move_to_end((kind, object_id))
            return kept[2]

    def put(self, kind: str, object_id: str, version: int, spec: str, obj: CatalogObject) -> None:
        """Keep ``obj`` as validated from row ``object_id`` of ``kind`` at ``version`` with stored text ``spec``
        (replacing the one kept before)."""
        if self.size <= 0:
            return
        with self._lock:
            self._objects[(kind, object_id)] = (version, spec, obj)
            self._objects.move_to_end((kind, object_id))
            while len(self._objects) > self.size:
                self._objects.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
