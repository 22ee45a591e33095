"""Compose the success and error emails of a finished run. Pure: builds messages, sends nothing."""

from __future__ import annotations

import html
import zoneinfo
from datetime import datetime
from email.message import EmailMessage

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord, RunStatus

SUCCESS, ERROR = "success", "error"
#: The notice that a definition succeeded after failed runs (to the error recipients).
RECOVERED = "recovered"
EMAIL_KINDS = frozenset({SUCCESS, ERROR, RECOVERED})


def kinds_due(status: RunStatus) -> list[str]:
    """Which kind of email a final status calls for."""
    if status == RunStatus.SUCCEEDED:
        return [SUCCESS]
    if status in {RunStatus.FAILED, RunStatus.COMPLETED_WITH_ERRORS, RunStatus.MISSED}:
        return [ERROR]
    return []


def recipients_for(definition: ExportDefinition, kind: str) -> list[str]:
    """The recipients of ``kind`` per the definition's Notifications step (empty when the toggle is off); the
    recovery notice goes to the error recipients, who heard of the failures."""
    setting = definition.notifications.success if kind == SUCCESS else definition.notifications.error
    return list(setting.recipients) if setting.enabled else []


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(zoneinfo.ZoneInfo(zone)).strftime(f"%Y-%m-%d %H:%M:%S {zone}")


def compose(
    *,
    definition: ExportDefinition,
    record: RunRecord,
    kind: str,
    sender: str,
    recipients: list[str],
    link_base_url: str | None = None,
    paused_after: int | None = None,
) -> EmailMessage:
    """The email for ``record``: text and HTML parts, times in the definition's time zone."""
    zone = definition.schedule.timezone
    status = record.status.value.replace("_", " ")
    subject = f"[member export] {definition.name}: {'recovered' if kind == RECOVERED else status}"
    duration = record.duration_seconds
    lines = [
        ("Export", definition.name),
        ("Status", status),
        ("Run", str(record.run_id)),
        ("Trigger", record.trigger or "-"),
        ("Started", _local(record.started_at, zone)),
        ("Finished", _local(record.finished_at, zone)),
        ("Duration", f"{duration:.1f} s" if duration is not None else "-"),
        ("Members extracted", str(record.extracted)),
        ("Delivered", str(record.delivered)),
        ("Failed", str(record.failed)),
    ]
    if record.added is not None:
        changes = f"{record.added} added, {record.changed or 0} changed, {record.removed or 0} removed"
        lines.append(("Changes", f"{changes}; {record.unchanged or 0} unchanged (not sent)"))
    if record.retried:
        lines.append(("Retried", f"{record.retried} members whose delivery failed in earlier runs"))
    if record.mass_removal_allowed:
        by = f" (requested by {record.requested_by})" if record.requested_by else ""
        lines.append(("Mass removal", f"allowed by the run's request: sync.max_removed did not apply{by}"))
    if link_base_url:
        lines.append(("Details", f"{link_base_url.rstrip('/')}/runs/{record.run_id}"))
    if kind == RECOVERED:
        lines.append(("Recovered", "this run succeeded after failed runs"))
    if paused_after is not None:
        lines.append(("Schedule", f"paused after {paused_after} consecutive failed runs; re-enable it once fixed"))
    errors = list(record.error_samples)
    text = "\n".join(f"{label}: {value}" for label, value in lines)
    if errors:
        text += "\n\nErrors:\n" + "\n".join(f"- {error}" for error in errors)
    rows = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in lines)
    error_html = ""
    if errors:
        error_html = "<h3>Errors</h3><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in errors) + "</ul>"
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["X-Export-Run-Id"] = str(record.run_id)
    message.set_content(text + "\n")
    message.add_alternative(
        f"<html><body><h2>{html.escape(subject)}</h2><table>{rows}</table>{error_html}</body></html>", subtype="html"
    )
    return message


def compose_digest(
    *, definition: ExportDefinition, records: list[RunRecord], sender: str, recipients: list[str]
) -> EmailMessage:
    """One email listing runs missed at once (an outage of the scheduler), instead of one email each."""
    zone = definition.schedule.timezone
    ordered = sorted(records, key=lambda r: (r.scheduled_for is None, r.scheduled_for, str(r.run_id)))
    subject = f"[member export] {definition.name}: {len(records)} scheduled runs missed"
    rows = [(_local(r.scheduled_for, zone), str(r.run_id)) for r in ordered]
    reason = next((r.failure_reason for r in ordered if r.failure_reason), None)
    text = f"Export: {definition.name}\nMissed runs: {len(records)}\n"
    if reason:
        text += f"Reason: {reason}\n"
    text += "\nScheduled for / Run\n" + "\n".join(f"- {when}  {run_id}" for when, run_id in rows)
    table = "".join(f"<tr><td>{html.escape(w)}</td><td>{html.escape(i)}</td></tr>" for w, i in rows)
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["X-Export-Missed-Runs"] = str(len(records))
    message.set_content(text + "\n")
    message.add_alternative(
        f"<html><body><h2>{html.escape(subject)}</h2>"
        f"{'<p>' + html.escape(reason) + '</p>' if reason else ''}"
        f"<table><tr><th>Scheduled for</th><th>Run</th></tr>{table}</table></body></html>",
        subtype="html",
    )
    return message
