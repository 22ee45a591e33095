"""How the dispatcher replicas divide a profile's limits between them. Pure.

Each live replica takes an equal share of ``max_in_flight`` (the remainder going to replicas in turn, moving
every :data:`ROTATION_SECONDS`, so that a limit below the number of replicas still reaches every replica's
batches) and of ``requests_per_second``. The shares of one *view* (the live replicas, and the rotation's
turn) add up to the limit. A replica whose share shrinks applies it at once; one whose share grows keeps
the smaller of its old and new shares until every live replica has said it is within its share of the new
view (:func:`effective`): the limit holds while replicas join, leave, and the remainder rotates.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

#: How often the remainder of a limit moves to the next replicas (seconds).
ROTATION_SECONDS = 60.0


def rotation_turn(unix_seconds: float) -> int:
    """The rotation's turn at a time (every replica computes the same, clocks in sync)."""
    return int(unix_seconds // ROTATION_SECONDS)


def view_of(replicas: Sequence[str], turn: int) -> str:
    """A short digest naming a view: the sorted live replicas and the turn."""
    return hashlib.sha256(f"{turn}|{','.join(sorted(replicas))}".encode()).hexdigest()[:32]


def in_flight_share(limit: int, replicas: Sequence[str], me: str, profile: str, turn: int) -> int:
    """``me``'s share of a profile's ``max_in_flight`` among ``replicas`` (it among them); the shares of all
    replicas add up to ``limit``."""
    ordered = sorted(replicas)
    count = len(ordered)
    base, remainder = divmod(limit, count)
    place = (ordered.index(me) - turn - zlib.crc32(profile.encode())) % count
    return base + (1 if place < remainder else 0)


def rate_share(rate: float, replicas: Sequence[str]) -> float:
    """Each replica's share of a profile's ``requests_per_second``."""
    return rate / len(replicas)


def burst_share(burst: int, replicas: Sequence[str]) -> int:
    """Each replica's share of a profile's ``burst`` (at least 1: a bucket holds a whole request)."""
    return max(1, burst // len(replicas))


def effective(previous: float | None, target: float, all_drained: bool) -> float:
    """The share to apply: ``target`` once every replica is within its share of the view (or for a share
    never applied, when they all are), else the smaller of ``previous`` and ``target`` (none yet: 0)."""
    if all_drained:
        return target
    return min(previous if previous is not None else 0, target)
