"""The audit log's rule of who may read an entry (``readable_to``), and the 412's message without who and when."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.application.audit import readable_to
from shared.errors import VersionMismatch

UNITS = st.frozensets(st.sampled_from(["emea", "apac", "amer", ""]), max_size=4)


@given(scope=UNITS, then=UNITS, now=UNITS)
def test_an_entry_is_readable_to_a_scope_covering_its_units_then_and_now_and_to_anyone_unscoped(
    scope: frozenset[str], then: frozenset[str], now: frozenset[str]
) -> None:
    asked: list[bool] = []

    def units_now() -> frozenset[str]:
        asked.append(True)
        return now

    readable = readable_to(scope, sorted(then), units_now)
    assert readable == (not scope or (then <= scope and now <= scope))
    if not scope or not then <= scope:
        assert not asked  # the object's units now are read only when they can decide


def test_a_mismatch_said_without_its_writer_names_neither_who_nor_when() -> None:
    mismatch = VersionMismatch(
        "SavedQuery", "gold", version=4, by="bob", at=datetime(2026, 12, 4, 19, 9, 8, tzinfo=UTC), units=("apac",)
    )
    assert "last changed by bob at 2026-12-04T19:09:08+00:00" in str(mismatch)
    assert mismatch.anonymous() == (
        "SavedQuery 'gold' was changed since it was read (it is now at version 4): nothing was written; read it again"
        " and redo the change"
    )
