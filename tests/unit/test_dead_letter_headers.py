"""A dead letter tells its source record's headers (a refused binary-mode CloudEvent kept its ce_* attributes only in
them), bounded whatever the record, and with no credential a header carried (session 55's contract hunt)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shared.events import DeadLetter
from shared.kafka.loop import (
    DEAD_LETTER_HEADER_NAME_BYTES,
    DEAD_LETTER_HEADER_VALUE_BYTES,
    DEAD_LETTER_HEADERS_BYTES,
    dead_letter_record,
)
from shared.kafka.records import Headers

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.s1gnatur3"


@dataclass(frozen=True)
class Record:
    headers: Headers | None
    topic: str = "exports.run-requests"
    partition: int = 0
    offset: int = 7
    key: bytes | None = b"crm-1"
    value: bytes | None = b'{"definition": "gold"}'


def _letter(headers: Headers | None) -> DeadLetter:
    out = dead_letter_record(Record(headers), "invalid event: x", service="s", dead_letter_topic="dl")
    return DeadLetter.model_validate_json(out.value)


def _told(letter: DeadLetter) -> list[tuple[str, str | None]]:
    return [(header.name, header.value) for header in letter.headers or []]


def test_a_dead_letter_tells_the_records_headers_in_order_and_masks_credentials():
    letter = _letter(
        [
            ("ce_type", b"com.example.unknown"),
            ("ce_id", b"evt-42"),
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("Authorization", f"Bearer {TOKEN}".encode()),
            ("X-Api-Key", b"k3y-v4lue-0123456789"),
            ("x-forwarded-auth-context", b"anything"),
            ("x-upstream", f"Bearer {TOKEN}".encode()),
            ("x-callback", b"https://svc:pa55w0rd@crm.example/hook"),
            ("Idempotency-Key", b"run-1:0"),
            ("x-empty", None),
            ("x-binary", b"\xff\xfeok"),
        ]
    )
    assert _told(letter) == [
        ("ce_type", "com.example.unknown"),
        ("ce_id", "evt-42"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("Authorization", "***"),
        ("X-Api-Key", "***"),
        ("x-forwarded-auth-context", "***"),
        ("x-upstream", "Bearer ***"),
        ("x-callback", "https://svc:***@crm.example/hook"),
        ("Idempotency-Key", "run-1:0"),
        ("x-empty", None),
        ("x-binary", "\ufffd\ufffdok"),
    ]
    assert not letter.headers_truncated


def test_a_record_without_headers_has_none_in_its_dead_letter():
    assert _letter([]).headers is None
    assert _letter(None).headers is None


def test_long_headers_and_many_are_cut_and_said_to_be():
    long_value = _letter([("x-long", b"v" * 10_000)])
    [(name, value)] = _told(long_value)
    assert name == "x-long"
    assert value is not None
    assert value == "v" * len(value)
    assert DEAD_LETTER_HEADER_VALUE_BYTES - 16 <= len(orjson.dumps(value)) <= DEAD_LETTER_HEADER_VALUE_BYTES
    assert long_value.headers_truncated
    many = _letter([(f"x-h{i}", b"v" * 100) for i in range(500)])
    assert many.headers is not None
    assert 20 < len(many.headers) < 500
    assert [header.name for header in many.headers] == [f"x-h{i}" for i in range(len(many.headers))]
    assert many.headers_truncated


header_names = st.text(min_size=1, max_size=400)
header_values = st.none() | st.binary(max_size=3000) | st.text(max_size=1500).map(str.encode)


@given(st.lists(st.tuples(header_names, header_values), max_size=80))
def test_whatever_the_headers_the_dead_letter_tells_at_most_the_bound_and_no_credential_named_one(headers):
    letter = _letter(headers)
    told = letter.headers or []
    size = sum(len(orjson.dumps(h.name)) + len(orjson.dumps(h.value)) for h in told)
    assert size <= DEAD_LETTER_HEADERS_BYTES
    assert all(len(orjson.dumps(h.name)) <= DEAD_LETTER_HEADER_NAME_BYTES for h in told)
    assert all(h.value is None or len(orjson.dumps(h.value)) <= DEAD_LETTER_HEADER_VALUE_BYTES for h in told)
    assert letter.headers_truncated or len(told) == len(headers)
