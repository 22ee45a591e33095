"""An outcome names its batch's members by key and the refused ones with status and reason."""

import uuid

from services.dispatcher.delivery import DeliveryResult
from services.dispatcher.member_outcomes import REASON_LIMIT, member_keys, refused_members
from services.dispatcher.splitting import Refused, Slice
from shared.events import MemberBatch


def _batch(key_column: str | None) -> MemberBatch:
    members = [{"id": 7, "tier": "gold"}, {"id": "a-8"}, {"tier": "no id"}]
    return MemberBatch(
        run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=members, key_column=key_column
    )


def test_keys_are_text_in_the_batch_order_and_a_missing_key_is_empty():
    assert member_keys(_batch("id")) == ["7", "a-8", ""]


def test_a_batch_without_a_key_column_names_no_members():
    assert member_keys(_batch(None)) is None
    assert refused_members(None, [Refused(Slice(0, 1), DeliveryResult(False, 503, 3, "busy"))]) == []


def test_refused_slices_name_each_member_with_the_last_status_reason_and_attempts():
    keys = ["1", "2", "3", "4"]
    refused = [
        Refused(Slice(1, 3), DeliveryResult(False, 422, 1, "invalid tier")),
        Refused(Slice(3, 4), DeliveryResult(False, None, 10, "x" * (REASON_LIMIT + 10))),
    ]
    named = refused_members(keys, refused)
    assert [(m.key, m.status, m.reason, m.attempts) for m in named[:2]] == [
        ("2", 422, "invalid tier", 1),
        ("3", 422, "invalid tier", 1),
    ]
    assert (named[2].key, named[2].status, len(named[2].reason)) == ("4", None, REASON_LIMIT)
