"""Classify a change-mode run's members against its definition's snapshot, in memory. Pure (numpy).

The snapshot is loaded once a run as sorted arrays: each member's 64-bit key hash, the 64-bit fingerprint
of its last delivered values, and a state (below), about 18 bytes a member with the seen flags, so 10M
members fit in ~180 MB. Each page's members are looked up by binary search (vectorised); the members of
the snapshot never seen by the end of the run are the removed ones.

A member the same run classified before (staged in the snapshot: a resumed run, after a crash) keeps the
kind it was given then, so the resumed run re-creates exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]
Int8s = npt.NDArray[np.int8]


class MemberState(IntEnum):
    """What the snapshot knows of a member, as this run sees it."""

    DELIVERED = 0  # its last values were delivered: compare fingerprints
    UNDELIVERED = 1  # never delivered (its adding failed): added again when seen, forgotten when gone
    ADDED_IN_RUN = 2  # this run classified it (before a resume): the same kind again
    CHANGED_IN_RUN = 3
    REMOVED_IN_RUN = 4


class Kind(IntEnum):
    """A member's classification (the codes of :meth:`ChangeIndex.classify`'s result)."""

    UNCHANGED = 0
    ADDED = 1
    CHANGED = 2


@dataclass
class ChangeIndex:
    """The snapshot's members sorted by key hash, and which of them this run has seen."""

    keys: Int64s
    fingerprints: Int64s
    states: Int8s
    seen: npt.NDArray[np.bool_]

    @classmethod
    def build(cls, keys: Int64s, fingerprints: Int64s, states: Int8s) -> ChangeIndex:
        """An index over the given members (in any order; key hashes unique)."""
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], fingerprints[order], states[order], np.zeros(len(keys), dtype=np.bool_))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Memory the index holds."""
        return self.keys.nbytes + self.fingerprints.nbytes + self.states.nbytes + self.seen.nbytes

    def classify(self, keys: Int64s, fingerprints: Int64s) -> Int8s:
        """Each member's :class:`Kind` (as int8), in order; marks the known ones as seen."""
        kinds = np.full(len(keys), Kind.ADDED, dtype=np.int8)
        if len(self.keys) == 0 or len(keys) == 0:
            return kinds
        at, found = self.lookup(keys)
        self.seen[at] = True
        states = self.states[at]
        differs = self.fingerprints[at] != fingerprints[found]
        known = np.where(
            states == MemberState.DELIVERED,
            np.where(differs, Kind.CHANGED, Kind.UNCHANGED),
            np.where(
                states == MemberState.CHANGED_IN_RUN,
                Kind.CHANGED,
                np.where(states == MemberState.REMOVED_IN_RUN, Kind.UNCHANGED, Kind.ADDED),
            ),
        )
        kinds[found] = known
        return kinds

    def lookup(self, keys: Int64s) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Where the snapshot holds ``keys``: the positions of those it holds, and which of ``keys`` they are."""
        if len(self.keys) == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(len(keys), dtype=np.bool_)
        clipped = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[clipped] == keys
        return clipped[found], found

    def staged_in_run(self, keys: Int64s) -> npt.NDArray[np.bool_]:
        """Which of ``keys`` this run staged as added or changed before a resume (sent, or to be sent again)."""
        staged = np.zeros(len(keys), dtype=np.bool_)
        at, found = self.lookup(keys)
        staged[found] = np.isin(self.states[at], (MemberState.ADDED_IN_RUN, MemberState.CHANGED_IN_RUN))
        return staged

    def partner_has(self) -> npt.NDArray[np.bool_]:
        """Which members the partner has: those last delivered as added or changed (a change or a removal this
        run has pending included), not those never delivered."""
        has: npt.NDArray[np.bool_] = np.isin(
            self.states, (MemberState.DELIVERED, MemberState.CHANGED_IN_RUN, MemberState.REMOVED_IN_RUN)
        )
        return has

    def removed(self) -> Int64s:
        """The key hashes of the removed members, in key-hash order: delivered and not seen, and those this run
        classified removed before a resume."""
        states = self.states
        gone = (~self.seen & (states == MemberState.DELIVERED)) | (states == MemberState.REMOVED_IN_RUN)
        found: Int64s = self.keys[gone]
        return found

    def forgotten(self) -> Int64s:
        """The key hashes of members never delivered and no longer selected (dropped from the snapshot, not sent)."""
        found: Int64s = self.keys[~self.seen & (self.states == MemberState.UNDELIVERED)]
        return found
