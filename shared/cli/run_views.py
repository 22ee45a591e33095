"""A run as exportctl prints it, in both modes, from the admin API's run view (a dict of JSON values).

Direct mode turns its records into the same view (:func:`shared.cli.direct.view_of`), so one summary,
one list line and one table serve both. Pure (exportctl's start-up).
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.cli.exits import USAGE, CliError
from shared.cli.output import dump, printable, table

#: Statuses of a run that is not over yet.
ACTIVE = frozenset({"queued", "extracting", "dispatching"})

View = dict[str, Any]


def summary(view: View, replays: list[View] | None = None) -> str:
    """A run's outcome in a few lines: status, counts, duration, error samples, replay links; each line one line of
    :func:`~shared.cli.output.printable` text (a reason or an error may quote a partner)."""
    seconds = view.get("duration_seconds")
    duration = f"{seconds:.1f}s" if seconds is not None else "-"
    lines = [
        f"run {view['run_id']} of '{view['definition']}': {view['status']}",
        f"  read: {view['extracted']}  delivered: {view['delivered']}  failed: {view['failed']}  duration: {duration}",
    ]
    if view.get("added") is not None:
        kinds = ("added", "changed", "removed", "unchanged")
        lines.append("  changes: " + "  ".join(f"{kind}: {view.get(kind) or 0}" for kind in kinds))
    if view.get("retried"):
        lines.append(f"  retried from earlier runs: {view['retried']}")
    if view.get("failure_reason"):
        lines.append(f"  reason: {view['failure_reason']}")
    if view.get("replay_of"):
        lines.append(f"  replay of run {view['replay_of']}")
    lines += [f"  error: {error}" for error in view.get("error_samples") or ()]
    lines += [
        f"  replayed by run {replay['run_id']}: {replay['status']}, delivered {replay['delivered']}"
        for replay in replays or []
    ]
    lines += [notification_line(notification) for notification in view.get("notifications") or ()]
    return "\n".join(printable(line, one_line=True) for line in lines)


def notification_line(notification: View) -> str:
    """One of the run's notifications (its detail's) in a line: what, to whom, where it stands and why."""
    line = f"  notification {notification['kind']} to {', '.join(notification['recipients'])}: {notification['status']}"
    if notification.get("attempts"):
        line += f", {notification['attempts']} failed attempt{'s' if notification['attempts'] > 1 else ''}"
    if notification.get("next_attempt_at"):
        line += f", next at {notification['next_attempt_at'][:19]}"
    if notification.get("last_error"):
        line += f": {notification['last_error']}"
    return line


TABLE_HEADERS = ("RUN ID", "DEFINITION", "STATUS", "STARTED", "READ", "DELIVERED", "FAILED")


def table_row(view: View) -> tuple[Any, ...]:
    """One run as a row of :data:`TABLE_HEADERS`."""
    started = (view.get("started_at") or "-")[:19]
    return (
        view["run_id"],
        view["definition"],
        view["status"],
        started,
        view["extracted"],
        view["delivered"],
        view["failed"],
    )


def parse_run_id(text: str) -> uuid.UUID:
    """A run id given on the command line; :class:`CliError` (usage) if it is not one."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(
            f"'{text}' is not a run id (a UUID such as 86095c5e-170c-4b14-bef7-3eb7c9314c5e)", USAGE
        ) from None


def print_run(view: View, replays: list[View], fmt: str) -> None:
    """One run: its summary and replay links, or the view as YAML or JSON (``replayed_by`` added)."""
    if fmt == "table":
        print(summary(view, replays))
    else:
        dump(view | {"replayed_by": [replay["run_id"] for replay in replays]}, fmt)


def print_runs(views: list[View], fmt: str) -> None:
    """Runs as a table, or as YAML or JSON."""
    if fmt == "table":
        table(TABLE_HEADERS, [table_row(view) for view in views])
    else:
        dump(views, fmt)


def print_cancelled(view: View) -> None:
    """What ``exportctl cancel`` prints (both modes): the run as it now stands."""
    print(summary(view))
