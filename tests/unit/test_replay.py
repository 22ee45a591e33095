"""Planning a replay run from dead letters: each refused member once, in batches of the template's size."""

import uuid
from datetime import UTC, datetime, timedelta

from shared.domain.catalog_objects import Priority
from shared.domain.replay import members_to_replay, replay_batches
from shared.events import DeadLetter

RUN, OTHER = uuid.uuid4(), uuid.uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def letter(run_id, batch_index, ids, seconds=0, **extra):
    return DeadLetter(
        reason="HTTP 400",
        source_topic="t",
        service="dispatcher",
        run_id=run_id,
        batch_index=batch_index,
        members=[{"id": i, "email": f"m{i}@example.com"} for i in ids] if ids is not None else None,
        at=T0 + timedelta(seconds=seconds),
        **extra,
    )


def test_members_of_the_run_once_each_in_batch_order():
    letters = [
        letter(RUN, 3, [30, 31]),
        letter(OTHER, 0, [1]),
        letter(RUN, 1, [10, 11]),
        letter(RUN, 1, [10, 11], seconds=5),  # the same batch, dead-lettered again after a redelivery
        letter(RUN, None, None, payload="garbage"),
    ]
    members = members_to_replay(letters, RUN, key_column="id")
    assert [m["id"] for m in members] == [10, 11, 30, 31]


def test_without_the_key_column_members_are_told_apart_by_content():
    letters = [letter(RUN, 0, [1, 2]), letter(RUN, 0, [1])]
    assert [m["id"] for m in members_to_replay(letters, RUN, key_column="member_no")] == [1, 2]


def test_replay_batches_are_numbered_from_zero_at_the_templates_size():
    members = [{"id": i} for i in range(7)]
    replay_id = uuid.uuid4()
    batches = replay_batches(
        members, replay_run_id=replay_id, definition="d", template="t", priority=Priority.HIGH, batch_size=3
    )
    assert [(b.batch_index, [m["id"] for m in b.members]) for b in batches] == [
        (0, [0, 1, 2]),
        (1, [3, 4, 5]),
        (2, [6]),
    ]
    assert {b.run_id for b in batches} == {replay_id}
    assert {b.priority for b in batches} == {Priority.HIGH}
