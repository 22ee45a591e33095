"""A member's last delivery, looked up by key from a run's page (the member delivery log of the run's export)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from services.admin.console.context import console_of
from services.admin.console.gate import PREFIX
from services.admin.console.pages import me_of
from shared.application import runs as use_cases
from shared.application.errors import Invalid, Missing
from shared.application.member_deliveries import MemberDeliveryAnswer, member_delivery
from shared.domain.member_deliveries import MAX_KEY_LENGTH

router = APIRouter(prefix=f"{PREFIX}/runs")


@router.get("/{run_id}/member")
def member_delivery_page(
    request: Request, run_id: uuid.UUID, key: Annotated[str, Query(max_length=MAX_KEY_LENGTH)] = ""
) -> Response:
    """The run's page's key search: the member's last delivery by the run's export (any run of it)."""
    console, me = console_of(request), me_of(request)
    record = use_cases.visible_run(me.actor, run_id, runs=console.admin.runs)
    answer: MemberDeliveryAnswer | None = None
    error = None
    key = key.strip()
    if key:
        admin = console.admin
        if admin.deliveries is None or admin.retries is None:
            error = "the member delivery log is not available on this server"
        else:
            try:
                answer = member_delivery(
                    me.actor,
                    record.definition,
                    key,
                    store=admin.definitions,
                    log=admin.deliveries,
                    retries=admin.retries,
                )
            except (Missing, Invalid) as exc:
                error = exc.reason
    return console.pages.render(request, "member_delivery.html", run=record, key=key, answer=answer, error=error)
