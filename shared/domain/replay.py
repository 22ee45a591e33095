"""Plan a replay run from a run's dead letters: which members to send again, in which batches. Pure.

A member may sit in several dead letters (a batch dead-lettered, then redelivered and dead-lettered
again); it is sent once, identified by the query's key column (or, without it, by its whole content).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.events import DeadLetter, MemberBatch, Priority


def members_to_replay(letters: Iterable[DeadLetter], run_id: uuid.UUID, key_column: str) -> list[dict[str, Any]]:
    """The distinct members of ``run_id``'s dead letters, in (batch, position) order."""
    seen: set[str] = set()
    members: list[dict[str, Any]] = []
    ordered = sorted(
        (letter for letter in letters if letter.run_id == run_id and letter.members),
        key=lambda letter: (letter.batch_index or 0, letter.at),
    )
    for letter in ordered:
        for member in letter.members or []:
            identity = json.dumps(member.get(key_column, member), sort_keys=True)
            if identity not in seen:
                seen.add(identity)
                members.append(member)
    return members


def replay_batches(
    members: list[dict[str, Any]],
    *,
    replay_run_id: uuid.UUID,
    definition: str,
    template: str,
    priority: Priority,
    batch_size: int,
) -> list[MemberBatch]:
    """The replay run's member batches, numbered from 0, ``batch_size`` members each."""
    return [
        MemberBatch(
            run_id=replay_run_id,
            definition=definition,
            template=template,
            priority=priority,
            batch_index=index,
            members=members[start : start + batch_size],
        )
        for index, start in enumerate(range(0, len(members), batch_size))
    ]


#: A replay run's publication steps, each recorded once Kafka acknowledged it (``runs.replay_acknowledged``): its
#: ``run.started``, its batches, its ``run.extraction_completed`` (all of them: nothing left to publish again).
STARTED_ACKNOWLEDGED, BATCHES_ACKNOWLEDGED, ALL_ACKNOWLEDGED = 1, 2, 3


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay run was recorded to send: its members, its batches, and a digest of the batches' records (the
    members of each batch index, as encoded): a retry whose dead letters give other batches is told apart."""

    members: int
    batches: int
    digest: str

    @classmethod
    def of(cls, members: int, records: Sequence[bytes]) -> ReplayPlan:
        digest = hashlib.sha256()
        for record in records:
            digest.update(hashlib.sha256(record).digest())
        return cls(members=members, batches=len(records), digest=digest.hexdigest())


@dataclass(frozen=True)
class ReplayPublication:
    """Where a replay run's publication stands: its plan (None for a replay recorded before 0017) and how many of
    its steps Kafka acknowledged (0 to :data:`ALL_ACKNOWLEDGED`)."""

    plan: ReplayPlan | None
    acknowledged: int
