"""Plan a replay run from a run's dead letters: which members to send again, in which batches. Pure.

A member may sit in several dead letters (a batch dead-lettered, then redelivered and dead-lettered
again); it is sent once, identified by the query's key column (or, without it, by its whole content).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
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
