"""A page's batches as written ahead of its records (each batch's first and last member's key), and a resume's re-read
of that page split into the same batches (see :class:`shared.domain.checkpoints.SendingPage`). Pure.

Keys are compared as batch outcomes name members (:mod:`shared.member_keys`: a driver's value and the member's JSON
give the same text), by equality only: the member store's order (its collation) is never recomputed here, the re-read
rows come in it. A member of the re-read page that is one of the recorded ends anchors its batch; one between two
ends of a batch is that batch's; one between a batch's last and the next one's first (inserted since) is in none: it
gets a batch index after the page's. A batch whose first member was deleted starts after the batch before it ends; one
whose last was deleted ends where the next one's first (or last) is found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from shared.member_batches import EncodedBatch
from shared.member_keys import outcome_key, row_key
from shared.querystore import JsonPage, Page


def batch_ends(page: Page | JsonPage, batches: Sequence[EncodedBatch], key_column: str) -> list[list[str | int]] | None:
    """Each batch's first and last member's key and its member count (None: the page names no key column); reads
    the key of two members a batch from a JSON page (their objects parsed)."""
    key: Callable[[int], str]
    if isinstance(page, Page):
        if key_column not in page.columns:
            return None
        at = list(page.columns).index(key_column)
        rows = page.rows
        key = lambda position: row_key(rows[position][at])  # noqa: E731
    else:
        members = page.members
        key = lambda position: outcome_key(orjson.loads(members[position]).get(key_column))  # noqa: E731
    ends: list[list[str | int]] = []
    start = 0
    for batch in batches:
        ends.append([key(start), key(start + batch.members - 1), batch.members])
        start += batch.members
    return ends


def regroup(keys: Sequence[str], ends: Sequence[Sequence[str | int]], size: int) -> tuple[list[list[int]], list[int]]:
    """The positions (in ``keys``, the re-read page's members in the store's order) of each recorded batch's members,
    and those of the members in none: inserted between two batches since the page was sent, or inside a batch now
    holding more members than it had (its ends kept, then its other members in order up to its count; ``size``, the
    members per record, for a batch recorded without its count)."""
    anchors: dict[str | int, tuple[int, bool]] = {}
    for index, (first, last, *_) in enumerate(ends):
        anchors[first] = (index, False)
        anchors[last] = (index, True)  # a one-member batch: its first is its last
    present = set(keys)
    groups: list[list[int]] = [[] for _ in ends]
    new: list[int] = []
    current, inside = 0, False
    for position, key in enumerate(keys):
        anchor = anchors.get(key)
        if anchor is not None and anchor[0] >= current:
            current, is_last = anchor  # the batches before it ended (their last members deleted, or found)
            groups[current].append(position)
            current, inside = (current + 1, False) if is_last else (current, True)
        elif inside:
            groups[current].append(position)
        elif current < len(ends) and ends[current][0] not in present:  # its first member deleted: it starts here
            groups[current].append(position)
            inside = True
        else:
            new.append(position)
    for index, positions in enumerate(groups):
        first, last, *counted = ends[index]
        inner = int(counted[0] if counted else size) - len({first, last})  # members it had between its ends
        others = [p for p in positions if keys[p] not in (first, last)]
        if len(others) > inner:  # members inserted inside it: its ends stay, the others fill it in order
            dropped = set(others[max(0, inner) :])
            groups[index] = [p for p in positions if p not in dropped]
            new += dropped
    return groups, sorted(new)
