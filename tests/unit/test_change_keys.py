"""A change run names its members' keys as their batch outcomes will (finding: a refused NUMERIC or timestamp key
was confirmed in the snapshot as if delivered, because the two sides wrote it differently)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from services.dispatcher.member_outcomes import member_keys
from services.extractor.change_extraction import page_keys
from shared.events import ChangeKind, MemberBatch, Priority
from shared.member_batches import BatchEncoder
from shared.member_fingerprints import canonical_json

KEYS = [
    decimal.Decimal("1042.00"),
    decimal.Decimal("7.50"),
    dt.datetime(2026, 12, 3, 9, 30, 0),
    dt.datetime(2026, 12, 3, 9, 30, 0, 5, tzinfo=dt.UTC),
    dt.date(2026, 1, 2),
    b"\x00\xffk",
    uuid.UUID(int=42),
    42,
    "m-42",
    None,
]


def test_a_change_runs_keys_are_the_keys_its_outcomes_name():
    columns = ["id", "tier"]
    rows = [(key, "gold") for key in KEYS]
    encoder = BatchEncoder(
        run_id=uuid.uuid4(),
        definition="sync",
        template="t",
        priority=Priority.NORMAL,
        batch_size=len(rows),
        max_record_bytes=1_000_000,
        key_column="id",
        change=ChangeKind.CHANGED,
    )
    [batch] = encoder.encode_json_page([canonical_json(columns, row) for row in rows], 0)
    # What the dispatcher decodes from the record and names the members by.
    named = member_keys(MemberBatch.model_validate_json(batch.value))
    assert page_keys(rows, 0) == named
    assert named[:2] == ["1042", "7.5"], "decimals as the record writes them, not str(Decimal)"
