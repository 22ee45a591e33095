"""The attempt inspector's route: a definition's last HTTP requests and answers (masked), within the scope."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.admin.dependencies import Context, Reader
from services.admin.problems import ApiProblem, problem_responses
from shared.application.attempts import attempt_view, read_attempts
from shared.domain.attempts import CapturedAttempt
from shared.domain.strict_values import BoolText

router = APIRouter(tags=["ExportDefinition"])


class AttemptView(BaseModel):
    """One HTTP attempt the dispatcher kept: the request sent and the answer (credentials and secret values
    masked as ``***``, bodies cut to the dispatcher's bound); ``status`` null when no answer came (``error``)."""

    id: int | None
    at: datetime
    definition: str
    profile: str
    run_id: uuid.UUID
    batch_index: int
    attempt: int
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    request_bytes: int
    status: int | None
    success: bool
    latency_ms: float
    response_headers: dict[str, str]
    response_body: str
    error: str | None

    @classmethod
    def of(cls, attempt: CapturedAttempt) -> AttemptView:
        return cls.model_validate(attempt_view(attempt))  # the shape exportctl prints too


@router.get(
    "/export-definitions/{name}/attempts",
    summary="The definition's last HTTP attempts (requests and answers, secrets masked), newest first",
    description=(
        "Needs the dry_run permission (editor, operator, admin: the attempts show the requests as sent, member "
        "data included) and the definition's business unit in the token's scope."
    ),
    responses=problem_responses(403, 404, 503),
    operation_id="read_attempts_ExportDefinition",
)
def attempts(
    context: Context,
    caller: Reader,
    name: str,
    profile: Annotated[str | None, Query(max_length=100, description="only attempts through this profile")] = None,
    failed: Annotated[BoolText | None, Query(description="only failed (true) or successful (false) attempts")] = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="only answers with this HTTP status")] = None,
    run_id: Annotated[uuid.UUID | None, Query(description="only attempts of this run")] = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 50,
) -> list[AttemptView]:
    if context.attempts is None:
        raise ApiProblem(503, "the attempt inspector's store is not configured", slug="attempts-unavailable")
    found = read_attempts(
        caller,
        name,
        store=context.definitions,
        attempts=context.attempts,
        profile=profile,
        failed=failed,
        status=status,
        run_id=run_id,
        limit=limit,
    )
    return [AttemptView.of(attempt) for attempt in found]
