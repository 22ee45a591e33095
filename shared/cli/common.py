"""What exportctl's direct-mode commands share: its settings, and the run view of a run record."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from shared.cli.exits import USAGE, CliError
from shared.domain.instants import json_instant
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from shared.domain.runs import RunNotification, RunRecord


class CliSettings(CommonSettings):
    """Settings of exportctl."""

    query_store_url: str = Field(
        default="sqlite:///.local/members.db",
        description="Member store: where `apply` discovers saved queries' columns and `demo-data` writes.",
    )
    api_url: str = Field(
        default="",
        description="The admin API (e.g. http://export-admin:8080, /api/v1 optional): when set, exportctl works "
        "through it; else on the catalog directly. --api-url and contexts (exportctl config) also set it.",
    )
    api_token: str = Field(default="", description="exportctl's bearer token for the admin API.")
    extractor_max_record_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="Largest member-batch record of a dead-letter replay, in bytes (the extractor's setting).",
    )


def missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` is a SQLite file that does not exist (opening it would create it, empty)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return False
    path = url[len(prefix) :].split("?", 1)[0]
    return bool(path) and path != ":memory:" and not Path(path).exists()


def settings_or_refusal() -> CliSettings:
    """The settings from the environment; :class:`CliError` (usage) naming each invalid one."""
    try:
        return CliSettings()
    except ValidationError as exc:
        problems = [
            f"EXPORT_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise CliError("invalid setting(s)\n  " + "\n  ".join(problems), USAGE) from None


def notification_view(notification: RunNotification) -> dict[str, Any]:
    """A run's notification as the admin API shows it (its ``NotificationView``: the ledger record's fields, under the
    same names, and the webhook's channel), in JSON values."""
    values = {field.name: getattr(notification, field.name) for field in dataclasses.fields(notification)}
    shown = {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}
    return {"kind": notification.kind, "channel": notification.channel} | {
        name: json_instant(value) if isinstance(value, datetime) else value for name, value in shown.items()
    }


def view_of(record: RunRecord, notifications: Sequence[RunNotification] | None = None) -> dict[str, Any]:
    """A run record as the admin API shows a run (its JSON view), for the printing both modes share; with its
    ``notifications`` as a run's detail shows them (None: left out, as in the API's lists)."""
    shown = None if notifications is None else [notification_view(notification) for notification in notifications]
    return {
        "run_id": str(record.run_id),
        "definition": record.definition,
        "status": record.status.value,
        "trigger": record.trigger,
        "requested_by": record.requested_by,
        "requested_at": json_instant(record.requested_at),
        "scheduled_for": json_instant(record.scheduled_for),
        "replay_of": str(record.replay_of) if record.replay_of else None,
        "started_at": json_instant(record.started_at),
        "finished_at": json_instant(record.finished_at),
        "duration_seconds": record.duration_seconds,
        "extraction_complete": record.extraction_complete,
        "extracted": record.extracted,
        "batches_expected": record.batches_expected,
        "batches_done": record.batches_done,
        "delivered": record.delivered,
        "failed": record.failed,
        "failure_reason": record.failure_reason,
        "error_samples": list(record.error_samples),
        "added": record.added,
        "changed": record.changed,
        "unchanged": record.unchanged,
        "removed": record.removed,
        "retried": record.retried,
        "mass_removal_allowed": record.mass_removal_allowed,
        # The API's is absolute when it knows its public URL (EXPORT_ADMIN_PUBLIC_URL); the catalog does not.
        "url": f"/api/v1/runs/{record.run_id}",
        "notifications": shown,
    }
