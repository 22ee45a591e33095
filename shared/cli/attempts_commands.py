"""``exportctl attempts``: a definition's last HTTP requests and answers, as the dispatcher kept them (masked).

Both modes: on the catalog (through the application layer, as the local operator) or through the admin
API (``GET /export-definitions/{name}/attempts``, within the token's scope); both print the same views.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import TYPE_CHECKING, Any

from shared.cli.argtypes import positive_int
from shared.cli.exits import OK
from shared.cli.output import dump, output_option, printable, table
from shared.cli.run_views import parse_run_id

if TYPE_CHECKING:
    from shared.cli.api import AdminApi
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct


def print_attempts(attempts: list[dict[str, Any]], details: bool, fmt: str = "table") -> None:
    """One line per attempt (newest first); with ``details``, its request and answer in full (as kept)."""
    if fmt != "table":
        dump(attempts, fmt)
        return
    if not attempts:
        print("no attempt kept (the dispatcher keeps failed attempts and a sample of successful ones)")
        return
    rows = [
        (
            a["at"][:19],
            a["profile"],
            a["run_id"][:8],
            a["batch_index"],
            a["attempt"],
            a["method"],
            a["status"] if a["status"] is not None else "none",
            f"{a['latency_ms']:.0f}",
            a["url"],
        )
        for a in attempts
    ]
    if not details:
        table(("AT", "PROFILE", "RUN", "BATCH", "TRY", "METHOD", "STATUS", "MS", "URL"), rows)
        return
    for attempt, row in zip(attempts, rows, strict=True):
        print(f"--- {row[0]}  {attempt['profile']}  run {attempt['run_id']} batch {row[3]} attempt {row[4]}")
        lines = [f"> {attempt['method']} {attempt['url']}"]
        lines += [f"> {name}: {value}" for name, value in attempt["request_headers"].items()]
        if attempt["request_body"]:
            lines.append(f">\n{attempt['request_body']}")
        if attempt["status"] is None:
            lines.append(f"< no answer: {attempt['error']}  ({row[7]} ms)")
        else:
            lines.append(f"< {attempt['status']}  ({row[7]} ms)")
            lines += [f"< {name}: {value}" for name, value in attempt["response_headers"].items()]
            if attempt["response_body"]:
                lines.append(f"<\n{attempt['response_body']}")
        # What the partner answered is shown as data, never as terminal control sequences.
        print(printable("\n".join(lines)))


def filters(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's filters, as the API names them."""
    values = {
        "profile": args.profile,
        "failed": "true" if args.failed else None,
        "status": args.status,
        "run_id": args.run,
        "limit": args.limit,
    }
    return {key: value for key, value in values.items() if value is not None}


def cmd_attempts(settings: CliSettings, args: argparse.Namespace) -> int:
    run_id = None if args.run is None else parse_run_id(args.run)
    # Imported here: exportctl through the admin API never loads the catalog (start-up time).
    from shared.application.attempts import attempt_view, read_attempts
    from shared.cli.direct import on_catalog

    def show(context: Direct) -> int:
        found = read_attempts(
            context.actor,
            args.definition,
            store=context.stores.definitions,
            attempts=context.stores.attempts,
            profile=args.profile,
            failed=True if args.failed else None,
            status=args.status,
            run_id=run_id,
            limit=args.limit,
        )
        print_attempts([attempt_view(a) for a in found], args.details, args.output)
        return OK

    return on_catalog(settings, show)


def api_attempts(api: AdminApi, args: argparse.Namespace) -> int:
    """``attempts`` through the admin API."""
    if args.run is not None:
        parse_run_id(args.run)  # refused here, as on the catalog, rather than by the API
    path = f"/export-definitions/{urllib.parse.quote(args.definition, safe='')}/attempts"
    print_attempts(api.call("GET", path, params=filters(args)), args.details, args.output)
    return OK


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``attempts`` (both modes)."""
    attempts = commands.add_parser(
        "attempts",
        help="a definition's last HTTP requests and answers (secrets masked), newest first",
        parents=parents or [],
    )
    attempts.add_argument("definition", help="the export definition's name")
    attempts.add_argument("--profile", help="only attempts through this connection profile")
    attempts.add_argument("--failed", action="store_true", help="only failed attempts")
    attempts.add_argument("--status", type=int, help="only answers with this HTTP status")
    attempts.add_argument("--run", metavar="RUN_ID", help="only attempts of this run")
    attempts.add_argument("--limit", type=positive_int, default=20, help="at most this many attempts (default: 20)")
    attempts.add_argument("--details", action="store_true", help="print each request and answer in full (as kept)")
    output_option(attempts, "table")
    attempts.set_defaults(func=cmd_attempts, api="cmd_attempts", catalog="needs", local=None)
