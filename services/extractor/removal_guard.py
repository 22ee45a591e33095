"""Count a change run's removals before it sends anything, from the query's keys alone (``sync.max_removed``).

Removals are known only once every page is read, and a change run publishes each page's added and changed
members as it goes. So a run that may remove more than its definition allows (:mod:`shared.domain.removal_limit`)
first reads its query's keys (the key column only, large pages) and looks them up in the snapshot, before its
first page: over the limit, it fails having sent nothing. The pass stops as soon as the limit can no longer be
reached (enough of the partner's members seen): with the default (half of them), a healthy run reads about
half of its keys. A run whose limit allows removing everyone, or whose removals are not sent, skips it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from shared.domain.change_index import ChangeIndex
from shared.domain.member_hashes import key_hashes
from shared.domain.removal_limit import RemovalLimit
from shared.member_keys import row_key

#: Keys one read of the pass takes (a few MB).
KEY_PAGE = 20_000


def partner_members(index: ChangeIndex) -> int:
    """How many members of the snapshot the partner has (what a run may remove a share of)."""
    return int(np.count_nonzero(index.partner_has()))


def removals_over_limit(index: ChangeIndex, limit: RemovalLimit, key_pages: Iterable[list[Any]]) -> int | None:
    """How many of the partner's members a run selecting the keys of ``key_pages`` would remove, when that is
    over ``limit``; None when it is not (the pages are read only until the limit cannot be reached). The
    index's own seen flags are left alone: the run's pages set them."""
    has = index.partner_has()
    delivered = int(np.count_nonzero(has))
    allowed = limit.allowed(delivered)
    seen = np.zeros(len(index), dtype=np.bool_)
    kept = 0  # the partner's members the keys so far select
    for keys in key_pages:
        hashes = key_hashes(map(row_key, keys), count=len(keys))
        at, _ = index.lookup(hashes)
        new = np.unique(at[~seen[at]])  # a key selected twice counts once
        seen[new] = True
        kept += int(np.count_nonzero(has[new]))
        if delivered - kept <= allowed:
            return None
    removed = delivered - kept
    return removed if limit.exceeded(removed, delivered) else None
