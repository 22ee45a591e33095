"""The reader's statement cache: values built once per key, and never more than its bound kept."""

import pytest

from shared.querystore.statement_cache import StatementCache


def test_a_value_is_built_once_per_key_and_the_least_recently_used_is_dropped_past_the_bound():
    built: list[str] = []

    def build(key: str) -> str:
        built.append(key)
        return key.upper()

    cache: StatementCache[str] = StatementCache(max_entries=2)
    assert cache.get("a", lambda: build("a")) == "A"
    assert cache.get("b", lambda: build("b")) == "B"
    assert cache.get("a", lambda: build("a")) == "A"  # a hit: not built again, and now the most recent
    assert built == ["a", "b"]
    assert cache.get("c", lambda: build("c")) == "C"  # over the bound: "b", the least recently used, goes
    assert len(cache) == 2
    assert cache.get("a", lambda: build("a")) == "A"
    assert cache.get("b", lambda: build("b")) == "B"
    assert built == ["a", "b", "c", "b"]


def test_a_cache_holds_one_value_at_least():
    with pytest.raises(ValueError, match="at least 1"):
        StatementCache(max_entries=0)
