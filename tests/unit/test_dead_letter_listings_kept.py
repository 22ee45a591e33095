"""The admin's kept dead-letter listings (:class:`services.admin.dead_letter_listings.DeadLetterListings`) over a
versioned source in memory: what is kept, by its weight in bytes."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

import pytest

from services.admin.dead_letter_listings import MAX_BYTES, DeadLetterListings
from shared.application import dead_letter_listing
from shared.application.actors import Actor, Role
from shared.application.dead_letter_listing import RetryCells
from shared.application.errors import Missing
from shared.domain.member_retries import MemberRetry, RefusalKind, RetryState
from shared.events import DeadLetter

_VIEWER = Actor(name="viewer", role=Role.VIEWER)


class _Source:
    """A topic that does not change: one version, its dead letters read only when ``known`` says no."""

    def __init__(self, letters: list[DeadLetter]) -> None:
        self.letters, self.reads = letters, 0

    def dead_letters(self) -> list[DeadLetter]:
        self.reads += 1
        return self.letters

    def dead_letters_unless(
        self, known: Callable[[Hashable], bool], *, spent: float = 0.0
    ) -> tuple[Hashable, list[DeadLetter] | None]:
        if known("v1"):
            return "v1", None
        self.reads += 1
        return "v1", self.letters


def _letter(run: uuid.UUID, reason: str, members: list[dict[str, Any]]) -> DeadLetter:
    return DeadLetter.model_construct(
        reason=reason,
        source_topic="t",
        service="dispatcher",
        run_id=run,
        definition="nightly",
        members=members,
        at=datetime.now(UTC),
    )


def test_an_outage_of_a_hundred_thousand_members_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """5,000 one-member groups and one run's outage (200 dead letters of 500 members, 100,000 UUID keys): exportctl's
    6 pages read the topic once, the listing kept at about 9 MB of its 64 MB (before: bounded at 100,000 groups and
    keys, never kept, the topic read at each of the 6 pages)."""
    monkeypatch.setattr(dead_letter_listing, "dead_letter_key_column", lambda actor, name, *, store: "id")
    monkeypatch.setattr(dead_letter_listing, "dead_letter_retries", lambda actor, name, keys, *, store, retries: {})
    letters = [
        _letter(uuid.UUID(int=i % 50 + 1), f"HTTP 400: member {i:06}", [{"id": str(uuid.uuid4())}])
        for i in range(5_000)
    ]
    outage = uuid.UUID(int=99)
    letters += [_letter(outage, "HTTP 503 after 5 attempts", [{"id": str(uuid.uuid4())} for _ in range(500)])] * 200
    source, listings = _Source(letters), DeadLetterListings()
    offset, pages = 0, 0
    while True:
        cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
        page = listings.listing(_VIEWER, source, runs=None, cells=cells, page=slice(offset, offset + 1_000))
        offset, pages = offset + len(page.groups), pages + 1
        if len(page.groups) < 1_000:
            break
    assert (page.total_groups, page.letters, pages, source.reads, len(listings)) == (5_001, 5_200, 6, 1, 1)
    assert page.groups[-1].members == 100_000
    assert page.groups[-1].retry == "100000 no retry"
    assert 5_000_000 < listings.weight < MAX_BYTES // 4


def test_a_listing_of_wide_characters_weighs_what_it_holds() -> None:
    """A member key with a "€" in each group and a reason with an emoji: the listing's weight is at least what
    tracemalloc finds it holds (before: weighed by characters, a quarter of the reasons' and half of the keys'
    bytes, a listing of 2-4 times the 64 MB bound kept)."""
    letters = [
        _letter(
            uuid.UUID(int=i % 20 + 1),
            f"\U0001f600 partner said no: {i:05} " + "r" * 400,
            [{"id": f"{uuid.uuid4()}€"} for _ in range(50)],
        )
        for i in range(2_000)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        grouped = dead_letter_listing.group_dead_letters(letters, key_column=lambda name: "id", reason_chars=None)
        del letters
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grouped.weight >= held
    assert "€" in grouped.groups[0].keys[0]  # the keys as they were, whatever their packing


class _Unversioned(_Source):
    """A topic whose broker names no id: no version, its dead letters read each time."""

    def dead_letters_unless(
        self, known: Callable[[Hashable], bool], *, spent: float = 0.0
    ) -> tuple[Hashable, list[DeadLetter] | None]:
        self.reads += 1
        return None, self.letters


def test_a_topic_without_a_version_is_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """No version (no topic id): nothing kept, each page a read of the topic."""
    monkeypatch.setattr(dead_letter_listing, "dead_letter_key_column", lambda actor, name, *, store: "id")
    monkeypatch.setattr(dead_letter_listing, "dead_letter_retries", lambda actor, name, keys, *, store, retries: {})
    source = _Unversioned([_letter(uuid.UUID(int=1), "HTTP 400", [{"id": "m1"}])])
    listings = DeadLetterListings()
    for _ in range(2):
        cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
        assert listings.listing(_VIEWER, source, runs=None, cells=cells).total_groups == 1
    assert (source.reads, len(listings), listings.weight) == (2, 0, 0)


class _Slow(_Source):
    """A topic each read of which takes ``seconds`` of ``clock``: what the listing says a read has spent is kept."""

    def __init__(self, letters: list[DeadLetter], clock: list[float], seconds: float) -> None:
        super().__init__(letters)
        self.clock, self.seconds = clock, seconds
        self.spent: list[float] = []

    def dead_letters_unless(
        self, known: Callable[[Hashable], bool], *, spent: float = 0.0
    ) -> tuple[Hashable, list[DeadLetter] | None]:
        self.clock[0] += self.seconds
        self.spent.append(spent)
        return super().dead_letters_unless(known)


def test_a_read_again_for_a_changed_key_column_has_what_the_version_read_left_of_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key column changed since the listing was kept: the read again is told the 45 s the version read took
    (its source gives it the 15 s left of its 60 s), not the 30 s the catalog took between (before: nothing, a
    bound of its own: Kafka waited up to twice 60 s)."""
    now, column = [1_000.0], ["id"]

    def key_column(actor: Actor, name: str, *, store: Any) -> str:
        now[0] += 30.0  # the catalog's time: not Kafka's
        return column[0]

    monkeypatch.setattr(dead_letter_listing, "dead_letter_key_column", key_column)
    monkeypatch.setattr(dead_letter_listing, "dead_letter_retries", lambda actor, name, keys, *, store, retries: {})
    source = _Slow([_letter(uuid.UUID(int=1), "HTTP 400", [{"id": "m1", "email": "m1@example.com"}])], now, 45.0)
    listings = DeadLetterListings(clock=lambda: now[0])
    for _ in range(2):
        cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
        assert listings.listing(_VIEWER, source, runs=None, cells=cells).groups[0].retry == "1 no retry"
    assert (source.reads, source.spent) == (1, [0.0, 0.0])  # read, then kept
    column[0] = "email"
    cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
    assert listings.listing(_VIEWER, source, runs=None, cells=cells).total_groups == 1
    assert (source.reads, source.spent) == (2, [0.0, 0.0, 0.0, 45.0])


def _every_key_pending(actor: Actor, name: str, keys: list[str], *, store: Any, retries: Any) -> dict[str, MemberRetry]:
    """Retry states: every key asked pending (a cell shows whatever keys it is given)."""
    return {key: MemberRetry(key, 400, "refused", RefusalKind.RETRYABLE, 1, RetryState.PENDING, "r") for key in keys}


def test_keys_taken_under_a_column_the_caller_no_longer_has_give_it_no_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key column changed (``id`` to ``email``, a PUT) between the read's grouping, which took the keys under
    ``id``, and the caller's own ask: its page has no cell, never one counting members by keys of another column
    (without ``listed``'s check of the column, "1 pending retry" of the member ids)."""
    asked: list[str] = []

    def key_column(actor: Actor, name: str, *, store: Any) -> str:
        asked.append(actor.name)
        return "id" if len(asked) == 1 else "email"

    monkeypatch.setattr(dead_letter_listing, "dead_letter_key_column", key_column)
    monkeypatch.setattr(dead_letter_listing, "dead_letter_retries", _every_key_pending)
    source = _Source([_letter(uuid.UUID(int=1), "HTTP 400", [{"id": 7, "email": "m7@example.com"}])])
    cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
    page = DeadLetterListings().listing(_VIEWER, source, runs=None, cells=cells)
    assert (len(asked), page.groups[0].retry) == (2, None)


def test_a_definition_gone_when_its_listing_was_kept_and_back_now_has_its_cells(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A definition the catalog did not know when the listing was read (no key column: no keys taken, no cell) is
    back: the next page reads the topic again and has its cell (without that case of ``answers``, the kept listing,
    keyless, answered: no cell until it expired)."""
    gone = [True]

    def key_column(actor: Actor, name: str, *, store: Any) -> str:
        if gone[0]:
            raise Missing(f"no export definition {name!r}")
        return "id"

    monkeypatch.setattr(dead_letter_listing, "dead_letter_key_column", key_column)
    monkeypatch.setattr(dead_letter_listing, "dead_letter_retries", _every_key_pending)
    source, listings = _Source([_letter(uuid.UUID(int=1), "HTTP 400", [{"id": 7}])]), DeadLetterListings()
    for retry in (None, None):  # read, then kept (still gone: nothing to read again for)
        cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
        assert listings.listing(_VIEWER, source, runs=None, cells=cells).groups[0].retry == retry
    assert source.reads == 1
    gone[0] = False
    cells = RetryCells(_VIEWER, store=None, retries=None)  # type: ignore[arg-type]  # the catalog patched above
    assert listings.listing(_VIEWER, source, runs=None, cells=cells).groups[0].retry == "1 pending retry"
    assert source.reads == 2
