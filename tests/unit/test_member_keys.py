"""A key read from the member store and the same key decoded from its record give the same text."""

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.member_outcomes import member_keys
from shared.events import MemberBatch, Priority
from shared.member_batches import BatchEncoder
from shared.member_keys import row_key

KEYS: list[Any] = [
    1042,
    "a-8",
    uuid.UUID("4f1c2d8e-0a7b-4a7e-9d1e-6f0b2a9c3e11"),
    decimal.Decimal("1042"),
    decimal.Decimal("1042.00"),
    decimal.Decimal("10.5"),
    decimal.Decimal(10**30 + 1),  # a whole numeric beyond 64 bits: row_key raised (orjson refuses it)
    decimal.Decimal("0.14285714285714285714"),
    decimal.Decimal("Infinity"),
    decimal.Decimal("NaN"),
    dt.date(2026, 12, 3),
    dt.datetime(2026, 12, 3, 10, 0, 0, 10967),
    dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC),
    dt.time(0, 0, 0, 10967),
    b"\x01\x02",
    True,
    None,
]


def _named_by_outcome(raw: Any) -> str:
    encoder = BatchEncoder(
        run_id=uuid.uuid4(),
        definition="d",
        template="t",
        priority=Priority.NORMAL,
        batch_size=1,
        max_record_bytes=10_000,
        key_column="id",
    )
    (batch,) = encoder.encode_page(("id", "note"), [(raw, "x")], 0)
    keys = member_keys(MemberBatch.model_validate_json(batch.value))
    assert keys is not None
    return keys[0]


@pytest.mark.parametrize("raw", KEYS, ids=repr)
def test_the_extractor_and_the_dispatcher_name_a_member_alike(raw: Any):
    assert row_key(raw) == _named_by_outcome(raw)


@given(st.one_of(st.integers(), st.text(), st.decimals(allow_nan=False, allow_infinity=False, places=3), st.uuids()))
def test_any_key_is_named_alike_on_both_sides(raw: Any):
    assert row_key(raw) == _named_by_outcome(raw)
