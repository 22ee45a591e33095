"""Route of the member delivery log: a member's last delivery (and retry state) by its key."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from services.admin.dependencies import Context, Reader
from services.admin.problems import problem_responses
from shared.application.errors import Missing
from shared.application.member_deliveries import delivery_view, member_delivery

router = APIRouter(tags=["Runs"])


class LastDeliveryView(BaseModel):
    """The last delivery of a member: delivered, or failed with the partner's status and reason."""

    outcome: Literal["delivered", "failed"]
    run_id: str
    batch_index: int
    at: datetime
    attempts: int
    status: int | None
    reason: str | None
    #: Sent again because an earlier run's delivery of it failed.
    retry: bool


class RetryStateView(BaseModel):
    """Where a refused member's retries stand: pending (the next run sends it), given_up, delivered or gone."""

    state: str
    kind: str
    failed_runs: int
    last_run_id: str
    status: int | None
    reason: str


class MemberDeliveryView(BaseModel):
    """A member's delivery as the log knows it (``last`` null when it was pruned, ``retry`` null when never refused)."""

    definition: str
    key: str
    last: LastDeliveryView | None
    retry: RetryStateView | None


@router.get(
    "/export-definitions/{name}/members/{key:path}/deliveries",
    summary="A member's last delivery (delivered, or failed with status and reason) and retry state, by its key",
    responses=problem_responses(403, 404, 422),
    operation_id="read_member_delivery",
)
def read_member_delivery(context: Context, caller: Reader, name: str, key: str) -> MemberDeliveryView:
    if context.deliveries is None or context.retries is None:
        raise Missing("the member delivery log is not available on this server", slug="member-delivery-not-found")
    answer = member_delivery(
        caller, name, key, store=context.definitions, log=context.deliveries, retries=context.retries
    )
    return MemberDeliveryView.model_validate(delivery_view(answer))  # the shape exportctl prints too
