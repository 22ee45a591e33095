"""``exportctl attempts``: a definition's last HTTP requests and answers, as the dispatcher kept them (masked).

Both modes: on the catalog (through the application layer, as the local operator) or through the admin
API (``GET /export-definitions/{name}/attempts``, within the token's scope); both print the same views.
"""

from __future__ import annotations

import argparse
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

from shared.cli.exits import OK, CliError
from shared.cli.output import dump, output_option, table

if TYPE_CHECKING:
    from shared.cli.api import AdminApi
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct
    from shared.domain.attempts import CapturedAttempt


def view_of(attempt: CapturedAttempt) -> dict[str, Any]:
    """An attempt as the admin API answers it (JSON-ready)."""
    return {
        "id": attempt.id,
        "at": attempt.at.isoformat().replace("+00:00", "Z"),  # as the API writes an instant in UTC
        "definition": attempt.definition,
        "profile": attempt.profile,
        "run_id": str(attempt.run_id),
        "batch_index": attempt.batch_index,
        "attempt": attempt.attempt,
        "method": attempt.method,
        "url": attempt.url,
        "request_headers": dict(attempt.request_headers),
        "request_body": attempt.request_body,
        "request_bytes": attempt.request_bytes,
        "status": attempt.status,
        "success": attempt.success,
        "latency_ms": attempt.latency_ms,
        "response_headers": dict(attempt.response_headers),
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


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
        print(f"> {attempt['method']} {attempt['url']}")
        for name, value in attempt["request_headers"].items():
            print(f"> {name}: {value}")
        if attempt["request_body"]:
            print(f">\n{attempt['request_body']}")
        if attempt["status"] is None:
            print(f"< no answer: {attempt['error']}  ({row[7]} ms)")
            continue
        print(f"< {attempt['status']}  ({row[7]} ms)")
        for name, value in attempt["response_headers"].items():
            print(f"< {name}: {value}")
        if attempt["response_body"]:
            print(f"<\n{attempt['response_body']}")


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


def _run_id(text: str | None) -> uuid.UUID | None:
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"--run '{text}': not a run id") from None


def cmd_attempts(settings: CliSettings, args: argparse.Namespace) -> int:
    run_id = _run_id(args.run)
    # Imported here: exportctl through the admin API never loads the catalog (start-up time).
    from shared.application.attempts import read_attempts
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
        print_attempts([view_of(a) for a in found], args.details, args.output)
        return OK

    return on_catalog(settings, show)


def api_attempts(api: AdminApi, args: argparse.Namespace) -> int:
    """``attempts`` through the admin API."""
    _run_id(args.run)
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
    attempts.add_argument("--limit", type=int, default=20, help="at most this many attempts (default: 20)")
    attempts.add_argument("--details", action="store_true", help="print each request and answer in full (as kept)")
    output_option(attempts, "table")
    attempts.set_defaults(func=cmd_attempts, api="cmd_attempts", catalog="needs", local=None)
