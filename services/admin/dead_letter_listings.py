"""The admin process's grouped dead-letter listings, kept while the dead-letter topic does not change, so that the
pages after a listing's first (exportctl reads every page of 1,000 groups), and the console's dead-letters page of a
run viewed again, are answered without reading the whole topic again.

A listing is kept by the topic's version (its id and its partitions' first and end offsets: a dead letter added or
dropped by retention, or the topic deleted and created again, changes it; a broker naming no topic id gives none, and
nothing is kept) and the filters (``run``, ``definition``, the reasons' length), grouped as every actor's (no business
unit applied). Each request reads the version (a consumer's bootstrap, the topic's metadata and its partitions' offsets:
how a read of the topic starts anyway, within the same dead-letter read slot and the same 60 s), then, Kafka's consumer
closed, scopes the kept groups to its caller and asks the catalog for its page's ``retry`` cells, as a listing read from
Kafka does. Bounded: :data:`MAX_LISTINGS` listings, :data:`MAX_BYTES` in all (their strings' sizes as CPython holds
them and a group's measured overhead), each kept :data:`MAX_AGE_SECONDS` at most.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from prometheus_client import Counter

from shared.application.actors import Actor, Permission, Role, authorise
from shared.application.dead_letter_listing import (
    REASON_CHARS,
    DeadLetterListing,
    GroupedDeadLetters,
    RetryCells,
    ScopedPage,
    group_dead_letters,
    list_dead_letters,
    listed,
    scoped_page,
)
from shared.application.ports import DeadLetterSource, RunUnitsReader, VersionedDeadLetterSource

#: Listings kept at once (a listing: one topic version and one pair of filters): exportctl's pages of the whole
#: topic, a few runs' and definitions' pages read meanwhile.
MAX_LISTINGS = 8
#: What the kept listings weigh together at most (:attr:`GroupedDeadLetters.weight`: each group's measured overhead
#: and its strings' ``sys.getsizeof``, its member keys one ASCII JSON string), in bytes: 64 MB. Measured (tracemalloc,
#: the dead letters freed): 100,000 groups of a reason of 100 characters and a UUID key each hold 47.0 MB (weight
#: 53.4 MB); 1,000,000 UUID keys in 20 groups 39.0 MB (weight 39.0 MB), a key with a "€" or an emoji in each group
#: the same; 10,000 whole reasons of 4,000 characters 43.4 MB (weight 44.1 MB), with a U+2019 83.7 MB (weight 84.3 MB:
#: not kept; weighed by their characters before, 43.1 MB, and kept). A listing of more is not kept: it is read from
#: the topic at each request, as before.
MAX_BYTES = 64_000_000
#: The longest a listing is kept, however unchanged the version: a topic deleted and created again may give the
#: same offsets to other dead letters.
MAX_AGE_SECONDS = 300.0

LISTINGS = Counter(
    "member_export_admin_dead_letter_listings_total",
    "GET /api/v1/dead-letters answers and the console's dead-letters pages of a run, by where their groups came "
    "from: `read` (the dead-letter topic read), `kept` (a listing kept at the topic's unchanged version, the topic "
    "not read).",
    ["source"],
)
for _source in ("read", "kept"):
    LISTINGS.labels(_source)  # both series exported from the start (0), for a rate or a ratio

#: Who the kept listings' member keys are taken for: every business unit (a request's own scope is applied to the
#: groups when it is answered, and its cells are asked of the catalog as its caller).
_EVERY_UNIT = Actor(name="admin: kept dead-letter listings", role=Role.VIEWER)

#: A listing's filters: its run, its definition, its reasons' length (the API's 100 characters; the console's whole).
_Filters = tuple[uuid.UUID | None, str | None, int | None]


@dataclass
class _Kept:
    grouped: GroupedDeadLetters
    at: float
    #: ``grouped.weight``, weighed once when kept (a sum over every group: not again under the lock at each keep).
    weight: int


@dataclass
class DeadLetterListings:
    """The kept listings of this admin process (thread-safe; its request threads share it)."""

    max_listings: int = MAX_LISTINGS
    max_bytes: int = MAX_BYTES
    max_age_seconds: float = MAX_AGE_SECONDS
    #: What a kept listing's age is measured by, and Kafka's part of a call (seconds).
    clock: Callable[[], float] = time.monotonic
    _kept: OrderedDict[tuple[Hashable, _Filters], _Kept] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def listing(
        self,
        actor: Actor,
        letters: DeadLetterSource,
        *,
        runs: RunUnitsReader | None,
        cells: RetryCells | None,
        run: uuid.UUID | None = None,
        definition: str | None = None,
        reason_chars: int | None = REASON_CHARS,
        page: slice | None = None,
    ) -> DeadLetterListing:
        """:func:`list_dead_letters` (its refusals), answered from a kept listing while the topic's version is the
        one it was read at (a source without versions is read at each call)."""
        authorise(actor, Permission.READ)
        if not isinstance(letters, VersionedDeadLetterSource):
            return list_dead_letters(
                actor,
                letters,
                runs=runs,
                cells=cells,
                run=run,
                definition=definition,
                reason_chars=reason_chars,
                page=page,
            )
        filters: _Filters = (run, definition or None, reason_chars)
        found: list[GroupedDeadLetters] = []

        def known(version: Hashable) -> bool:
            # Asked while the read's consumer is open (its deadline running): the kept listings only, never the
            # catalog (a slow catalog would be a Kafka read timed out).
            kept = self._get((version, filters))
            if kept is not None:
                found.append(kept)
                return True
            return False

        started = self.clock()
        version, read = letters.dead_letters_unless(known)
        spent = self.clock() - started  # Kafka's part of the call so far: the version read
        scoped: ScopedPage
        if read is None:
            grouped, source = found[0], "kept"
            scoped = scoped_page(actor, grouped, runs=runs, page=page)
            # Keys taken under another key column (a definition's query changed since) cannot give this caller's
            # cells: the catalog asked now, Kafka's consumer closed (its errors the catalog's), for the definitions
            # of the groups this page shows only (the only cells it gives), and the topic read again.
            if not grouped.answers(cells, scoped.shown):
                # Within what the version read left of the 60 s (before: 60 s of its own, Kafka waited up to twice
                # 60 s); the catalog's time between is not Kafka's (a slow catalog is never a Kafka read timed out).
                version, read = letters.dead_letters_unless(lambda _: False, spent=spent)
        if read is not None:
            builder = RetryCells(_EVERY_UNIT, cells.store, cells.retries, cells.tolerated) if cells else None
            grouped = group_dead_letters(
                read,
                key_column=builder.key_column if builder is not None else None,
                run=run,
                definition=definition,
                reason_chars=reason_chars,
            )
            source = "read"
            if version is not None:  # no version (no topic id): nothing to know the topic unchanged by
                self._keep((version, filters), grouped)
            scoped = scoped_page(actor, grouped, runs=runs, page=page)
        answer = listed(grouped, scoped, cells=cells)
        LISTINGS.labels(source).inc()  # an answer given: a catalog timed out above counts none
        return answer

    def _get(self, key: tuple[Hashable, _Filters]) -> GroupedDeadLetters | None:
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            if self.clock() - kept.at > self.max_age_seconds:
                del self._kept[key]
                return None
            self._kept.move_to_end(key)
            return kept.grouped

    def _keep(self, key: tuple[Hashable, _Filters], grouped: GroupedDeadLetters) -> None:
        weight = grouped.weight
        if weight > self.max_bytes:
            return  # too large to keep: read at each request, as before
        with self._lock:
            version = key[0]
            # A listing of another version is never asked again (offsets only grow): dropped at once.
            for other in [k for k in self._kept if k[0] != version]:
                del self._kept[other]
            self._kept[key] = _Kept(grouped, self.clock(), weight)
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_listings or self.weight > self.max_bytes:
                self._kept.popitem(last=False)

    @property
    def weight(self) -> int:
        """What the kept listings weigh now, in bytes (call with the lock held, or for a test's look)."""
        return sum(kept.weight for kept in self._kept.values())

    def __len__(self) -> int:
        return len(self._kept)
