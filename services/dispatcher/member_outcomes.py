"""Name the members of a batch's outcome: every key in order, and the refused ones with their reason.

Pure: the outcome event carries them so per-member state (delivery log, change snapshot, retries on
the next run) can follow exactly what was delivered.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.dispatcher.delivery import DeliveryResult
from services.dispatcher.splitting import Refused
from shared.events import MemberBatch, RefusedMember
from shared.member_keys import outcome_key

#: A refused member's reason is cut to this many characters in the outcome (the dead letter has it whole).
REASON_LIMIT = 500


def member_keys(batch: MemberBatch) -> list[str] | None:
    """Each member's key as text, in the batch's order; None when the batch names no key column."""
    column = batch.key_column
    if column is None:
        return None
    return [outcome_key(member.get(column)) for member in batch.members]


def refused_members(keys: list[str] | None, refused: Sequence[Refused[DeliveryResult]]) -> list[RefusedMember]:
    """The refused slices' members by key, with the partner's last status, reason and attempts."""
    if keys is None:
        return []
    return [
        RefusedMember(
            key=keys[index],
            status=slice_.outcome.status,
            reason=(slice_.outcome.error or "delivery failed")[:REASON_LIMIT],
            attempts=slice_.outcome.attempts,
        )
        for slice_ in refused
        for index in range(slice_.slice.start, slice_.slice.stop)
    ]
