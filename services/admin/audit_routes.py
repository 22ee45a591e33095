"""The audit log route: who changed what, when, before and after (secrets masked), within the caller's scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.admin.dependencies import Context, Reader
from shared.application.audit import audit_view, read_audit
from shared.domain.strict_values import IsoDateTime

router = APIRouter(tags=["Audit"])


class AuditView(BaseModel):
    """One change of the catalog."""

    id: int | None
    at: datetime
    actor: str
    action: str
    kind: str
    name: str
    business_units: list[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@router.get(
    "/audit", summary="Changes of the catalog, newest first (within the token's scope)", operation_id="read_audit"
)
def audit(
    context: Context,
    caller: Reader,
    object: Annotated[str | None, Query(max_length=100, description="an object's name")] = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    actor: Annotated[str | None, Query(max_length=200, description="who made the change")] = None,
    since: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[AuditView]:
    entries = read_audit(
        caller,
        context.audit,
        context.definitions,
        name=object,
        kind=kind,
        who=actor,
        since=since,
        limit=limit,
        offset=offset,
    )
    return [AuditView.model_validate(audit_view(e)) for e in entries]  # the shape exportctl prints on the catalog too
