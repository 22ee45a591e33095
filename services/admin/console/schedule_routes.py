"""The schedule composer's live part: the CRON expression the composer fills, an Advanced-mode expression checked
as it is typed, and the next fire times in the zone and in UTC (htmx posts the Schedule step's fields)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import cache
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.admin.console import schedule_view
from services.admin.console.context import console_of
from services.admin.console.definition_form import schedule_body
from services.admin.console.forms import Form, Problems, form_of
from services.admin.console.gate import PREFIX
from shared.domain.schedule import Schedule, composer_of

router = APIRouter(prefix=PREFIX)


@cache
def zones() -> list[str]:
    """The IANA zones this machine knows, sorted, for the searchable zone menu."""
    return sorted(zone for zone in zoneinfo.available_timezones() if "/" in zone or zone == "UTC")


def preview_values(form: Form) -> dict[str, Any]:
    """What the preview shows for the Schedule step's fields: the CRON expression, the schedule in words and its
    next 5 fire times, or the problems (named as the definition's ``schedule.…`` fields)."""
    advanced = form.flag("advanced")
    try:
        schedule = Schedule.model_validate(schedule_body(form))
    except ValidationError as error:
        problems = Problems.of(error, prefix="schedule.")
        return {"problems": problems, "cron": None, "advanced": advanced, "shape": None, "times": []}
    cron = schedule.repeat.expression if schedule.repeat else None
    shape = None
    if advanced and cron is not None and (composed := composer_of(cron)) is not None:
        shape = schedule_view.repeat_summary(composed)
    return {
        "problems": Problems(),
        "cron": cron,
        "advanced": advanced,
        "shape": shape,
        "summary": schedule_view.summary(schedule),
        "enabled": schedule.enabled,
        "times": schedule_view.fire_times(schedule, dt.datetime.now(dt.UTC), 5),
    }


@router.post("/schedule/preview")
def schedule_preview(request: Request) -> Response:
    """The preview of the Schedule step's fields as they are now (htmx, as the composer or the CRON changes)."""
    return console_of(request).pages.render(
        request, "schedule_preview.html", oob=True, **preview_values(form_of(request))
    )
