"""Change mode's classification against a snapshot: the vectorised index against a plain reference model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.change_index import ChangeIndex, Kind, MemberState
from shared.domain.member_hashes import hash64

KEYS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINGERPRINTS = st.integers(min_value=-4, max_value=4)  # few values: equal fingerprints happen often
STATES = st.sampled_from(list(MemberState))


def _reference(snapshot: dict[int, tuple[int, MemberState]], members: list[tuple[int, int]]) -> list[Kind]:
    kinds = []
    for key, fingerprint in members:
        if key not in snapshot:
            kinds.append(Kind.ADDED)
            continue
        known, state = snapshot[key]
        if state is MemberState.DELIVERED:
            kinds.append(Kind.UNCHANGED if known == fingerprint else Kind.CHANGED)
        elif state is MemberState.CHANGED_IN_RUN:
            kinds.append(Kind.CHANGED)
        elif state is MemberState.REMOVED_IN_RUN:
            kinds.append(Kind.UNCHANGED)
        else:  # never delivered, or added by this run before a resume
            kinds.append(Kind.ADDED)
    return kinds


def _index(snapshot: dict[int, tuple[int, MemberState]]) -> ChangeIndex:
    keys = np.array(list(snapshot), dtype=np.int64)
    fingerprints = np.array([f for f, _ in snapshot.values()], dtype=np.int64)
    states = np.array([int(s) for _, s in snapshot.values()], dtype=np.int8)
    return ChangeIndex.build(keys, fingerprints, states)


@settings(max_examples=300, deadline=None)
@given(
    snapshot=st.dictionaries(KEYS, st.tuples(FINGERPRINTS, STATES), max_size=60),
    fresh=st.dictionaries(KEYS, FINGERPRINTS, max_size=30),
    kept=st.data(),
    page_size=st.integers(min_value=1, max_value=25),
)
def test_classification_matches_the_reference_whatever_the_pages(snapshot, fresh, kept, page_size):
    # The run's members: some of the snapshot's (same or other fingerprint), and new ones, in any order.
    chosen = kept.draw(st.lists(st.sampled_from(sorted(snapshot)), unique=True) if snapshot else st.just([]))
    members = [(k, kept.draw(FINGERPRINTS)) for k in chosen] + [(k, f) for k, f in fresh.items() if k not in snapshot]
    members = kept.draw(st.permutations(members))
    index = _index(snapshot)

    kinds: list[Kind] = []
    for start in range(0, len(members), page_size):
        page = members[start : start + page_size]
        keys = np.array([k for k, _ in page], dtype=np.int64)
        fingerprints = np.array([f for _, f in page], dtype=np.int64)
        kinds += [Kind(k) for k in index.classify(keys, fingerprints)]

    assert kinds == _reference(snapshot, members)
    seen = {k for k, _ in members}
    removed = sorted(
        k
        for k, (_, state) in snapshot.items()
        if (k not in seen and state is MemberState.DELIVERED) or state is MemberState.REMOVED_IN_RUN
    )
    assert index.removed().tolist() == removed
    forgotten = sorted(k for k, (_, s) in snapshot.items() if k not in seen and s is MemberState.UNDELIVERED)
    assert index.forgotten().tolist() == forgotten


def test_a_first_run_adds_every_member_and_removes_none():
    index = _index({})
    kinds = index.classify(np.array([3, 1, 2], dtype=np.int64), np.array([0, 0, 0], dtype=np.int64))
    assert kinds.tolist() == [Kind.ADDED] * 3
    assert index.removed().tolist() == []


def test_the_index_holds_about_eighteen_bytes_a_member():
    snapshot = {k: (k, MemberState.DELIVERED) for k in range(10_000)}
    assert _index(snapshot).nbytes == 18 * 10_000


def test_hashes_do_not_depend_on_the_process():
    # BLAKE2b, not Python's salted hash(): the value is the same in every process and release.
    assert hash64(b"member-42") == 5332304799599907979


def test_fingerprints_follow_the_values_and_the_columns_and_write_what_orjson_cannot():
    import datetime as dt
    from decimal import Decimal

    from shared.member_fingerprints import Fingerprints, canonical_json

    columns = ["id", "points", "joined"]
    row = (1, Decimal("12.50"), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    fingerprint = Fingerprints(columns)
    assert fingerprint(row) == Fingerprints(list(columns))(list(row)), "stable, whatever the sequence type"
    assert fingerprint(row) != fingerprint((1, Decimal("12.51"), row[2]))
    assert fingerprint(row) != Fingerprints(["id", "score", "joined"])(row), "keyed by the column names"
    assert fingerprint((2**70, None, None)) != fingerprint((2**70 + 1, None, None)), "beyond 64-bit integers"
    assert canonical_json(["b", "a"], [2, 1]) == b'{"a":1,"b":2}'
