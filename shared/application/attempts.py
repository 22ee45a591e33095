"""Reading the attempt inspector: a definition's last HTTP attempts, within the reader's scope.

The attempts are stored masked by the dispatcher (``services/dispatcher/inspector.py``), but they are the
requests as sent, member data included (bodies, and URLs and headers a template fills from query columns):
reading them needs what a dry run needs, the ``dry_run`` permission (editor, operator, admin; a viewer is
refused, 403), and the definition's business unit in the reader's scope (403 otherwise, 404 for a definition
that does not exist). A definition's attempts are the rows written under its id: those of a deleted
definition are never shown for one of the same name created later.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.application.actors import Actor, Permission
from shared.application.errors import Forbidden
from shared.application.objects import visible_with_id
from shared.application.ports import AttemptsReader, DefinitionsStore
from shared.domain.attempts import CapturedAttempt, attempt_fields
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.instants import json_instant


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
    if not actor.may(Permission.DRY_RUN):
        raise Forbidden(
            f"role '{actor.role.value}' may not read attempts: they show the requests as sent, member data "
            "included, which needs the dry_run permission (editor, operator or admin)"
        )
    definition_id, _ = visible_with_id(actor, store, ExportDefinition, definition)
    return attempts.attempts(definition_id, profile=profile, failed=failed, status=status, run_id=run_id, limit=limit)


def attempt_view(attempt: CapturedAttempt) -> dict[str, Any]:
    """An attempt as the admin API answers it and exportctl prints it (JSON-ready; one shape for both)."""
    # In the API's order (its AttemptView's): id and at first, then what was sent and answered.
    view: dict[str, Any] = {"id": attempt.id, "at": None} | attempt_fields(attempt)
    return view | {"at": json_instant(attempt.at), "run_id": str(attempt.run_id)}
