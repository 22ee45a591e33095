"""A workaround for a group join that kafka-python 3.0 loses: the consumer would sit outside its group for good.

kafka-python 3.0 (3.0.12 here) sends a JoinGroup/SyncGroup as a task on its IO thread and awaits it within each
``poll(timeout_ms)``; when the timeout ends first, the task goes on and the next poll awaits it again. It takes a
finished join's assignment only while ``need_rejoin()`` holds. A rejoin the group leader starts because its
topics' metadata changed (partitions added, or a topic created just before: the first assignment saw no
partitions) holds only while the metadata differs from what the leader assigned; the join itself brings them in
line. So when that join finishes between two polls, no later poll takes it: the member stays "rebalancing",
its heartbeat off, its assignment unset. The broker drops it a session timeout later and the consumer polls
nothing, silently, until it closes (its LeaveGroup then answered ``UnknownMemberIdError``).

The shorter the poll's timeout, and the busier the machine, the likelier a join outlasts it: the extractor's
100 ms polls met this a few times in CI. :func:`revive_lost_rejoin`, called before each poll, asks for the join
again; the next poll sends it and, as with any join in flight, awaits it until it is taken. Not fixed upstream
as of 3.0.12 (the report, its reproduction and a proposed fix: docs/upstream/kafka-python-lost-join.md).
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)


def lost_rejoin(consumer: Any) -> bool:
    """Whether ``consumer``'s group coordinator finished a join that no poll will take (see the module)."""
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(coordinator, "rejoining", False):
        return False
    return bool(getattr(task, "is_done", False)) and not coordinator.need_rejoin()


def revive_lost_rejoin(consumer: Any, service: str) -> bool:
    """Ask for the group join again when the client lost one (:func:`lost_rejoin`); True when it did. Reads and
    sets the client's private state: a client without it (another version, a test double) is left alone."""
    if not lost_rejoin(consumer):
        return False
    consumer._coordinator.request_rejoin()
    log.warning(
        "consumer group join lost by the Kafka client: joining again",
        service=service,
        group=str(getattr(consumer, "config", {}).get("group_id")),
    )
    return True
