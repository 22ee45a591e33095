"""The validated catalog objects a bulk read keeps: by kind, row id and version, bounded (issue 18)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.catalog.validated_objects import ValidatedObjects
from shared.domain.catalog_objects import SavedQuery

Key = tuple[str, str]
keys = st.tuples(st.sampled_from(["ExportDefinition", "SavedQuery"]), st.sampled_from(["a", "b", "c", "d", "e"]))
steps = st.lists(st.tuples(st.booleans(), keys, st.integers(1, 4)), max_size=60)


def text(version: int) -> str:
    """The stored text of a row at ``version`` (as the store reads it)."""
    return f'{{"name": "v{version}", "sql": "SELECT id FROM members"}}'


def query(version: int) -> SavedQuery:
    return SavedQuery(name=f"v{version}", sql="SELECT id FROM members")


@given(steps=steps, size=st.integers(0, 6))
def test_an_object_is_answered_only_at_the_version_it_was_kept_at_and_no_more_are_kept_than_the_bound(
    steps: list[tuple[bool, Key, int]], size: int
):
    kept = ValidatedObjects(size)
    model: dict[Key, int] = {}  # the version last kept of each key (the bound may have dropped it since)
    for put, (kind, object_id), version in steps:
        if put:
            kept.put(kind, object_id, version, text(version), query(version))
            model[(kind, object_id)] = version
        else:
            answer = kept.get(kind, object_id, version, text(version))
            # Never another version's object, nor one never kept; a kept one may have been dropped by the bound.
            assert answer is None or (model.get((kind, object_id)) == version and answer == query(version))
        assert len(kept) <= size


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_objects_least_recently_used_are_dropped_first_once_idle():
    clock = Clock()
    kept = ValidatedObjects(2, idle_seconds=600, clock=clock)
    kept.put("SavedQuery", "a", 1, text(1), query(1))
    kept.put("SavedQuery", "b", 1, text(1), query(1))
    clock.now = 1_000
    assert kept.get("SavedQuery", "a", 1, text(1)) == query(1)  # used: b is now the least recently used
    kept.put("SavedQuery", "c", 1, text(1), query(1))
    assert kept.get("SavedQuery", "b", 1, text(1)) is None
    assert kept.get("SavedQuery", "a", 1, text(1)) == query(1)
    assert kept.get("SavedQuery", "c", 1, text(1)) == query(1)


def test_a_full_store_whose_objects_are_in_use_keeps_them_and_not_the_newcomer():
    clock = Clock()
    kept = ValidatedObjects(2, idle_seconds=600, clock=clock)
    kept.put("SavedQuery", "a", 1, text(1), query(1))
    kept.put("SavedQuery", "b", 1, text(1), query(1))
    clock.now = 599
    kept.put("SavedQuery", "c", 1, text(1), query(1))
    assert kept.get("SavedQuery", "c", 1, text(1)) is None
    assert kept.get("SavedQuery", "a", 1, text(1)) == query(1)
    assert kept.get("SavedQuery", "b", 1, text(1)) == query(1)
    kept.put("SavedQuery", "a", 2, text(2), query(2))  # a newer version of one kept still replaces it
    assert kept.get("SavedQuery", "a", 2, text(2)) == query(2)


@given(objects=st.integers(1, 40), size=st.integers(1, 20))
def test_a_burst_of_more_objects_than_the_bound_reuses_as_many_as_the_bound_at_its_instant(objects: int, size: int):
    """Read ahead, then read again at the instant (seconds later): least recently used first alone would reuse
    none once the burst is bigger than the bound."""
    clock = Clock()
    kept = ValidatedObjects(size, idle_seconds=600, clock=clock)
    for number in range(objects):  # the read-ahead: each object validated and kept
        kept.put("SavedQuery", str(number), 1, text(1), query(1))
    clock.now = 10
    reused = 0
    for number in range(objects):  # the instant: kept ones reused, the others validated and offered again
        if kept.get("SavedQuery", str(number), 1, text(1)) is not None:
            reused += 1
        else:
            kept.put("SavedQuery", str(number), 1, text(1), query(1))
    assert reused == min(objects, size)


def test_a_newer_version_replaces_the_older_one():
    kept = ValidatedObjects(4)
    kept.put("SavedQuery", "a", 1, text(1), query(1))
    kept.put("SavedQuery", "a", 2, text(2), query(2))
    assert kept.get("SavedQuery", "a", 1, text(1)) is None
    assert kept.get("SavedQuery", "a", 2, text(2)) == query(2)
    assert len(kept) == 1


def test_an_object_kept_is_not_answered_for_another_stored_text_at_the_same_version():
    """Two edits at once on SQLite both store the next version: the text read tells them apart."""
    kept = ValidatedObjects(4)
    kept.put("SavedQuery", "a", 2, text(2), query(2))
    assert kept.get("SavedQuery", "a", 2, text(3)) is None
    assert kept.get("SavedQuery", "a", 2, text(2)) == query(2)
