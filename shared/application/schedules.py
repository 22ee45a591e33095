"""Use case: pause a definition's schedule (the notifier's auto-pause after consecutive failed runs)."""

from __future__ import annotations

from shared.application.audit import change
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition
from shared.errors import NotFound

#: Concurrent edits are rare; a few tries of the compare-and-set are plenty.
ATTEMPTS = 5


def pause_schedule(name: str, *, store: DefinitionsStore, actor: str = "notifier") -> bool:
    """Disable a definition's schedule (a new version, which the scheduler picks up); False if it was off or gone.

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
            paused, version, audit=[change(actor, "pause", store, before=current, after=paused)]
        ):
            return True
    return False
