"""Schedule maths: due instants of a CRON expression in a time zone, and deterministic run ids. Pure.

This is the plain cron evaluation of the foundation; the reference platform's composer, DST rules,
From/To bounds, catch-up and overlap policies come with the scheduler issue.
"""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime

from croniter import croniter

#: Namespace of scheduled run ids: uuid5(namespace, "<definition id>/<due instant in UTC>").
RUN_ID_NAMESPACE = uuid.UUID("6f1c1f52-2b4e-4a51-9b0a-5b0f5e3c9d10")


def due_instants(cron: str, timezone: str, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
    """The instants in ``(after, until]`` at which ``cron``, read in ``timezone``, fires; in UTC, ascending."""
    zone = zoneinfo.ZoneInfo(timezone)
    iterator = croniter(cron, after.astimezone(zone))
    instants: list[datetime] = []
    while len(instants) < limit:
        moment: datetime = iterator.get_next(datetime)
        if moment > until:
            break
        instants.append(moment.astimezone(UTC))
    return instants


def scheduled_run_id(definition_id: uuid.UUID, due: datetime) -> uuid.UUID:
    """The run id of a definition's run due at ``due``: the same for every replica and every replay."""
    return uuid.uuid5(RUN_ID_NAMESPACE, f"{definition_id}/{due.astimezone(UTC).isoformat()}")
