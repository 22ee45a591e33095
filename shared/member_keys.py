"""A member's key as text, as batch outcomes name it: one rule for every side that compares keys.

The dispatcher names a batch's members by the key values it decodes from the record
(:func:`outcome_key`); the extractor, the change snapshot, the next-run retries and exportctl compare
those names with keys they read as the database driver gave them (:func:`row_key`). Both must give the
same text for the same member, so a driver's value goes through what the record does first: the member
batch encoding (``shared.member_batches``), then JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.member_batches import member_value


def outcome_key(value: Any) -> str:
    """The key of a member as decoded from a record (JSON values): its text, empty when there is none."""
    return "" if value is None else str(value)


def row_key(raw: Any) -> str:
    """The key of a member read from the member store (a driver's value), as its outcome will name it."""
    if raw is None or isinstance(raw, str | int):
        return outcome_key(raw)  # the common keys, written and read back as they are
    value = member_value(raw)
    if isinstance(value, int):
        return outcome_key(value)  # a whole numeric: its digits, of any size (orjson refuses more than 64 bits)
    return outcome_key(orjson.loads(orjson.dumps(value)))
