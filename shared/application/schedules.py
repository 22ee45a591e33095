"""Use cases: pause a definition's schedule (the notifier's auto-pause after consecutive failed runs); who paused it."""

from __future__ import annotations

import uuid

from shared.application.audit import change
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition
from shared.errors import NotFound

#: Concurrent edits are rare; a few tries of the compare-and-set are plenty.
ATTEMPTS = 5


def paused_by_run(run_id: uuid.UUID) -> str:
    """Who paused a schedule, as recorded when the notifier paused it after run ``run_id``'s failures."""
    return f"notifier: run {run_id}"


def pause_schedule(
    name: str, *, store: DefinitionsStore, actor: str = "notifier", paused_by: str | None = None
) -> bool:
    """Disable a definition's schedule (a new version, which the scheduler picks up); False if it was off or gone.
    Recorded as paused by ``paused_by`` (None: ``actor``) in the same transaction (``schedule_paused_by``).

    A compare-and-set on the definition's version: an edit made between the read and the write is
    never overwritten, the pause is applied to the edited definition instead.
    """
    for _ in range(ATTEMPTS):
        try:
            _, version, current = store.get_versioned(ExportDefinition, name)
        except NotFound:
            return False
        if not current.schedule.enabled:
            return False
        paused = current.model_copy(update={"schedule": current.schedule.model_copy(update={"enabled": False})})
        if store.replace_if_version(
            paused, version, audit=[change(actor, "pause", store, before=current, after=paused)], paused_by=paused_by
        ):
            return True
    return False


def who_paused(name: str, *, store: DefinitionsStore) -> str | None:
    """Who disabled definition ``name``'s schedule, as recorded with the change that did: the operator (the actor
    of the change), or the notifier after a run's failures (:func:`paused_by_run`); None while it is enabled or
    when not known (disabled before this was recorded)."""
    return store.schedule_paused_by(name)
