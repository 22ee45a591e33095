"""``merged_headers``: a request's headers with the profile's credentials, the Idempotency-Key, a signature and the
trace context laid over the template's, names compared case-insensitively (the dispatcher merges them per attempt).

Session 41 replaced its pass over the merged names per override by one look-up per override; the former algorithm
(still its fallback) is the oracle: the same headers, in the same order, for any names (those that differ by case
only, in ``base`` too, and names whose lower case changes their length)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.http_fields import _merged_slowly, merged_headers


def merged_by_passes(base: dict[str, str], *overrides: dict[str, str]) -> dict[str, str]:
    """The algorithm before session 41 (each override's name removes every merged name equal to it but for case),
    which ``merged_headers`` keeps for a ``base`` holding names that differ by case only."""
    return _merged_slowly(dict(base), overrides)


def test_an_override_replaces_the_template_header_whatever_its_case_and_goes_last() -> None:
    base = {"content-type": "text/plain", "X-Tenant": "a", "idempotency-key": "from the template"}
    merged = merged_headers(
        base, {"Authorization": "Bearer t"}, {"Idempotency-Key": "run:1"}, {}, {"traceparent": "00"}
    )
    assert list(merged.items()) == [
        ("content-type", "text/plain"),
        ("X-Tenant", "a"),
        ("Authorization", "Bearer t"),
        ("Idempotency-Key", "run:1"),
        ("traceparent", "00"),
    ]
    assert base["idempotency-key"] == "from the template", "the template's headers are not changed"


def test_names_of_the_base_differing_by_case_only_are_all_replaced() -> None:
    merged = merged_headers({"X-A": "1", "x-a": "2", "B": "3"}, {"X-a": "4"})
    assert list(merged.items()) == [("B", "3"), ("X-a", "4")]


#: Names differing by case only, and some whose lower case differs from a plain one (the Kelvin sign, İ, ß).
NAMES = st.sampled_from(
    [
        *("A", "a", "B", "Content-Type", "content-type", "CONTENT-TYPE", "Idempotency-Key", "idempotency-key"),
        *("traceparent", "Traceparent", "ß", "SS", "ss", "K", "k", "\u212a", "İ", "i̇"),
    ]
)
HEADERS = st.dictionaries(NAMES, st.text(max_size=2), max_size=6)


@settings(max_examples=3000)
@given(HEADERS, st.lists(HEADERS, max_size=5))
def test_the_same_headers_in_the_same_order_as_the_former_algorithm(
    base: dict[str, str], overrides: list[dict[str, str]]
) -> None:
    expected = merged_by_passes(base, *overrides)
    assert list(merged_headers(base, *overrides).items()) == list(expected.items())
