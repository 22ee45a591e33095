"""How both modes print objects, schedules, dry runs and applied changes (one rendering, whichever way)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from shared.cli.output import document, dump, lines, printable, table


def print_objects(kind: str, specs: list[dict[str, Any]], fmt: str) -> None:
    """Objects as manifest documents (``-o yaml`` / ``json``), or a table of their names and labels."""
    if fmt == "table":
        print_names(specs)
        return
    documents = [document(kind, spec) for spec in specs]
    dump(documents[0] if len(documents) == 1 and fmt == "json" else documents, fmt)


def print_names(specs: list[dict[str, Any]]) -> None:
    """A table of names and labels (and a definition's template and schedule state)."""
    rows = [
        (
            spec["name"],
            spec.get("label"),
            spec.get("template") or spec.get("query") or spec.get("profile") or spec.get("base_url"),
            _enabled(spec),
        )
        for spec in specs
    ]
    table(("NAME", "LABEL", "USES", "SCHEDULE"), rows)


def _enabled(spec: dict[str, Any]) -> str | None:
    schedule = spec.get("schedule")
    if not isinstance(schedule, dict):
        return None
    state = "enabled" if schedule.get("enabled") else "disabled"
    after = schedule.get("after")
    return f"{state}, after {after['definition']}" if isinstance(after, dict) else state


def schedule_preview(
    name: str, schedule: dict[str, Any], cron: str | None, fire_times: list[str], not_computable: str | None = None
) -> dict[str, Any]:
    """What ``next-runs`` prints, from a definition's schedule as JSON, its CRON expression and fire times (none when
    the scheduler could not compute them: ``not_computable``, the error's type)."""
    from shared.domain.schedule import composer_of  # loaded when used (exportctl's start-up)

    shape = composer_of(cron) if cron else None
    once = schedule.get("once")
    after = schedule.get("after")
    return {
        "definition": name,
        "enabled": schedule["enabled"],
        "timezone": schedule["timezone"],
        "cron": cron,
        "shape": shape.model_dump(mode="json", exclude_none=True) if shape else None,
        "once": f"{once['date']} at {str(once['time'])[:5]}" if once else None,
        # A chained export: "after nightly (succeeded, completed_with_errors)"; it has no fire times.
        "after": f"after {after['definition']} ({', '.join(after['statuses'])})" if after else None,
        "fire_times": [] if not_computable else fire_times,
        "not_computable": not_computable,
    }


def not_computable_line(error: str) -> str:
    """What exportctl says of a schedule whose fire times the scheduler could not compute (as the console does)."""
    return f"schedule not computable ({error}): not fired until edited"


def print_schedule(preview: dict[str, Any], fmt: str) -> None:
    """A definition's schedule and its next fire times, in its zone and in UTC.

    ``preview``: ``definition``, ``enabled``, ``timezone``, ``cron``, ``shape`` (the composer's, or
    None), ``once`` (``date time``, or None), ``after`` (a chained export's "after X (statuses)", or None),
    ``fire_times`` (ISO date-times in UTC) and ``not_computable`` (the scheduler's error, or None).
    """
    if fmt != "table":
        dump(preview, fmt)
        return
    if preview.get("after"):
        print(f"{preview['after']}: runs after each such run of that export, not by the clock")
        if not preview["enabled"]:
            print("schedule disabled: it will not run")
        return
    if preview["once"]:
        print(f"once on {preview['once']} ({preview['timezone']})")
    elif preview["cron"]:
        shape = preview["shape"]
        described = ", ".join(f"{key} {value}" for key, value in shape.items()) if shape else "advanced mode"
        print(f"cron '{preview['cron']}' ({preview['timezone']}): {described}")
    else:
        print("no recurrence")
    if preview.get("not_computable"):
        print(not_computable_line(preview["not_computable"]))
        return
    if not preview["enabled"]:
        print("schedule disabled: it will not fire; the times it would fire:")
    zone = ZoneInfo(preview["timezone"])
    rows = []
    for text in preview["fire_times"]:
        instant = datetime.fromisoformat(text)
        rows.append((f"{instant.astimezone(zone):%Y-%m-%d %H:%M %Z}", f"{instant:%Y-%m-%d %H:%M} UTC"))
    table(("LOCAL TIME", "UTC"), rows)


def print_dry_run(requests: list[dict[str, Any]]) -> None:
    """Rendered requests as a human reads them (method and URL, headers, body)."""
    if not requests:
        print("the query returns no member: nothing would be sent")
    for index, request in enumerate(requests, 1):
        print(f"--- request {index}: {request['members']} member(s)")
        # A member's values (from the members database) are shown as data.
        lines(
            [
                f"{request['method']} {request['url']}",
                *(f"{name}: {value}" for name, value in request["headers"].items()),
            ]
        )
        print(printable(f"\n{request['body']}"))


def print_changes(changes: list[dict[str, Any]], diff: bool) -> None:
    """What an apply did (or, with ``diff``, would do): ``Kind/name created|updated (fields)|unchanged``."""
    for change in changes:
        fields = f" ({', '.join(change['fields'])})" if change["fields"] else ""
        would = "would be " if diff and change["change"] != "unchanged" else ""
        print(f"{change['kind']}/{change['name']} {would}{change['change']}{fields}")
