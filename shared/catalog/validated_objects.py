"""Catalog objects validated from their stored rows, kept by kind and id with the row's version (issue 18).

A burst's start reads the definitions of thousands of runs (and their queries and templates) at once; validating
each stored spec with pydantic is a good part of that read. The store keeps what it validated, under the row's
``version``, which every stored change raises (:class:`~shared.catalog.definitions_store.SqlDefinitionsStore`:
apply, compare-and-set, rename): a row read again at the same version is the same object, at another version it is
validated again. The row is still read every time (its version with it): a deleted object is not found, a changed
one is never answered from its old copy. Bounded: the objects least recently used go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from shared.domain.catalog_objects import CatalogObject

#: Validated objects kept at most: a round's burst started together (``EXPORT_EXTRACTOR_START_BATCH``, 5,000 by
#: default) with their queries and templates, and a margin. About 6.5 KiB of memory each (an export definition as
#: ``bench_burst_start`` writes it, measured as RSS): some 40 MiB when full. A burst of more distinct definitions
#: than this is validated at its instant as before (the least recently used gone first, every one is missed).
VALIDATED_OBJECTS = 6_000


class ValidatedObjects:
    """Validated objects by (kind, id), each with the version of the row it was validated from; thread-safe."""

    def __init__(self, size: int = VALIDATED_OBJECTS) -> None:
        self.size = size
        self._objects: OrderedDict[tuple[str, str], tuple[int, CatalogObject]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, object_id: str, version: int) -> CatalogObject | None:
        """The object validated from row ``object_id`` of ``kind`` at ``version``; None when there is none kept."""
        with self._lock:
            kept = self._objects.get((kind, object_id))
            if kept is None or kept[0] != version:
                return None
            self._objects.move_to_end((kind, object_id))
            return kept[1]

    def put(self, kind: str, object_id: str, version: int, obj: CatalogObject) -> None:
        """Keep ``obj`` as validated from row ``object_id`` of ``kind`` at ``version`` (replacing an older one)."""
        if self.size <= 0:
            return
        with self._lock:
            self._objects[(kind, object_id)] = (version, obj)
            self._objects.move_to_end((kind, object_id))
            while len(self._objects) > self.size:
                self._objects.popitem(last=False)

    def __len__(self) -> int:
        return len(self._objects)
