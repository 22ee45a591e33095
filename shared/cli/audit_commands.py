"""``exportctl audit``: who changed what in the catalog, and when (both modes: the catalog, or the admin API)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.cli.exits import CliError, fail
from shared.cli.kinds import KIND_HELP, canonical_kind
from shared.cli.output import dump, lines, output_option

if TYPE_CHECKING:
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct


def print_entries(entries: list[dict[str, Any]], details: bool, fmt: str = "table") -> None:
    """One line per change (the fields it changed); with ``details``, the object before and after.

    ``-o yaml`` or ``json``: the entries as they are (before and after included)."""
    if fmt != "table":
        dump(entries, fmt)
        return
    import yaml

    for entry in entries:
        before, after = entry.get("before") or {}, entry.get("after") or {}
        fields = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        changed = f" ({', '.join(fields)})" if entry["action"] in ("update", "pause", "rename") and fields else ""
        what = f"{entry['kind']}/{entry['name']}{changed}"
        lines([f"{_seconds(entry['at'])}  {entry['actor']:<20} {entry['action']:<7} {what}"])
        if details:
            print(yaml.safe_dump({"before": entry.get("before"), "after": entry.get("after")}, sort_keys=False))
    if not entries:
        print("no change recorded")


def _seconds(at: str) -> str:
    """An entry's time in the table: to the second, in UTC (``2026-12-07T11:38:52Z``), as both modes print it."""
    return datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def filters(args: argparse.Namespace) -> dict[str, Any]:
    """The audit filters of the command line, as the API names them."""
    values = {"object": args.object, "kind": args.kind, "actor": args.actor, "since": args.since, "limit": args.limit}
    return {key: value for key, value in values.items() if value is not None}


def cmd_audit(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        since = datetime.fromisoformat(args.since) if args.since else None
    except ValueError:
        return fail(f"--since '{args.since}': expected an ISO date or date-time")

    # Imported here: exportctl through the admin API never loads the catalog (start-up time).
    from shared.application.audit import audit_view, read_audit
    from shared.cli.direct import on_catalog

    def show(context: Direct) -> int:
        entries = read_audit(
            context.actor,
            context.stores.audit,
            context.stores.definitions,
            name=args.object,
            kind=args.kind,
            who=args.actor,
            since=since,
            limit=args.limit,
        )
        print_entries([audit_view(e) for e in entries], args.details, args.output)
        return 0

    return on_catalog(settings, show)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``audit`` (both modes)."""
    audit = commands.add_parser("audit", help="who changed what in the catalog, newest first", parents=parents or [])
    audit.add_argument("--object", metavar="NAME", help="only changes of the object of this name")
    audit.add_argument("--kind", type=_kind, help=f"only changes of this kind: {KIND_HELP}")
    audit.add_argument("--actor", help="only changes made by this actor")
    audit.add_argument("--since", help="only changes from this ISO date or date-time on")
    audit.add_argument("--limit", type=int, default=50, help="at most this many changes (default: 50)")
    audit.add_argument("--details", action="store_true", help="print each object before and after (secrets masked)")
    output_option(audit, "table")
    audit.set_defaults(func=cmd_audit, api="cmd_audit", catalog="needs", local=None)


def _kind(name: str) -> str:
    """An argparse type: a kind's name or alias, as the kind's own name."""
    try:
        return canonical_kind(name)
    except CliError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
