"""The answer headers the reqwest partner client keeps: read at once into a plain multi-dict, bounded as aiohttp's
parser bounds them (at most MAX_HEADERS, none longer than its 8190-byte line)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pyreqwest.http import HeaderMap

from shared.outbound.reqwest_partner_http import MAX_HEADER_LINE, MAX_HEADERS, _answer_headers

NAMES = st.sampled_from(["x-a", "x-b", "retry-after", "content-type", "set-cookie"])
VALUES = st.one_of(
    st.text(st.sampled_from("ab1 \t/;="), max_size=20),
    st.integers(MAX_HEADER_LINE - 20, MAX_HEADER_LINE + 20).map(lambda n: "v" * n),
)


def line(name: str, value: str) -> int:
    return len(f"{name}: {value}".encode())


@given(st.lists(st.tuples(NAMES, VALUES), max_size=MAX_HEADERS + 20))
def test_the_headers_kept_are_the_answers_own_in_order_of_name_bounded_as_aiohttp(pairs):
    kept = list(_answer_headers(HeaderMap(pairs)).items())
    fitting = [pair for pair in pairs if line(*pair) <= MAX_HEADER_LINE]
    by_name = [pair for name in dict.fromkeys(name for name, _ in pairs) for pair in fitting if pair[0] == name]
    assert kept == by_name[:MAX_HEADERS]  # every short header, a name's values in order, none too long


def test_the_retry_after_and_any_header_read_case_insensitively():
    headers = _answer_headers(HeaderMap([("retry-after", "7"), ("x-partner", "p"), ("x-partner", "q")]))
    assert (headers.get("Retry-After"), headers.getall("X-Partner")) == ("7", ["p", "q"])


def test_a_header_whose_value_is_not_ascii_is_left_out_and_the_others_kept():
    # pyreqwest gives such a value neither as text nor as bytes (aiohttp keeps it: 'café', or '\udce9' for latin-1)
    headers = _answer_headers(HeaderMap([("x-message", "café"), ("retry-after", "5"), ("x-message", "ok")]))
    assert list(headers.items()) == [("retry-after", "5")]
