"""Reading the attempt inspector: a definition's last HTTP attempts, within the reader's scope.

The attempts are stored masked by the dispatcher (``services/dispatcher/inspector.py``); reading them is
a read of the definition: the reader's role must grant ``read`` and the definition's business unit must be
in the reader's scope (403 otherwise, 404 for a definition that does not exist, as for the definition).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from shared.application.actors import Actor, Permission, authorise
from shared.application.objects import visible
from shared.application.ports import DefinitionsStore
from shared.domain.attempts import CapturedAttempt
from shared.domain.catalog_objects import ExportDefinition


class AttemptsReader(Protocol):
    """The captured attempts, read (the catalog's attempts store)."""

    def attempts(
        self,
        definition: str,
        *,
        profile: str | None = None,
        failed: bool | None = None,
        status: int | None = None,
        run_id: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[CapturedAttempt]: ...


def read_attempts(
    actor: Actor,
    definition: str,
    *,
    store: DefinitionsStore,
    attempts: AttemptsReader,
    profile: str | None = None,
    failed: bool | None = None,
    status: int | None = None,
    run_id: uuid.UUID | None = None,
    limit: int = 50,
) -> list[CapturedAttempt]:
    """The definition's captured attempts, newest first (filtered by profile, failure, status, run)."""
    authorise(actor, Permission.READ)
    visible(actor, store, ExportDefinition, definition)
    return attempts.attempts(definition, profile=profile, failed=failed, status=status, run_id=run_id, limit=limit)
