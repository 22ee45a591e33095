"""What a change-mode run writes to its definition's snapshot (the store: shared/catalog/change_snapshots.py). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.events import ChangeKind


@dataclass(frozen=True)
class SnapshotRun:
    """A change-mode run of a snapshot: the rows it stages carry its ``serial``."""

    snapshot_id: int
    serial: int


@dataclass(frozen=True)
class StagedMember:
    """A member a run sends (or takes as it is, for a kind not sent): key, new fingerprint and values."""

    key_hash: int
    key: str
    fingerprint: int
    values: bytes


@dataclass(frozen=True)
class Staging:
    """Members of one kind a run stages together: sent in batch ``batch_index``, or not sent (None)."""

    kind: ChangeKind
    batch_index: int | None
    members: Sequence[StagedMember]


@dataclass(frozen=True)
class StagedBatch:
    """A batch a run staged and has no outcome of yet: its index, its kind and its members (as staged: the values
    sent)."""

    batch_index: int
    kind: ChangeKind
    members: Sequence[StagedMember]


@dataclass(frozen=True)
class InFlightStaging:
    """What a run staged under a range of batch indexes (a page it was sending when it stopped): the batches with no
    outcome yet, and whether it staged any member under those indexes at all (outcome folded or not)."""

    batches: Sequence[StagedBatch]
    staged: bool
