"""``exportctl``: apply manifests, run exports, follow runs, create demo members.

Reads the same ``EXPORT_*`` settings as the services (catalog URL, Kafka, topic prefix). The parser is
built from light modules; a command's implementation is imported when it runs (see :func:`lazy`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.cli import audit_commands, database_commands, dead_letters, secret_commands
from shared.cli.common import CliSettings, fail
from shared.log import configure_logging

KIND_NAMES = "ConnectionProfile, HttpTemplate, SavedQuery, ExportDefinition"


def lazy(name: str) -> Callable[[CliSettings, argparse.Namespace], int]:
    """The direct-mode command ``name`` of :mod:`shared.cli.direct_commands`, imported when called."""

    def command(settings: CliSettings, args: argparse.Namespace) -> int:
        module: Any = importlib.import_module("shared.cli.direct_commands")
        return int(getattr(module, name)(settings, args))

    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exportctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    apply = commands.add_parser("apply", help="create or update objects from YAML manifests")
    apply.add_argument("-f", "--file", type=Path, action="append", required=True, help="manifest file (repeatable)")
    apply.add_argument(
        "--skip-discovery",
        action="store_true",
        help="do not run saved queries against the query store to discover their columns",
    )
    apply.add_argument("--diff", action="store_true", help="print what would change, change nothing")
    apply.set_defaults(func=lazy("cmd_apply"))

    get = commands.add_parser("get", help="print objects as YAML (secrets masked)")
    get.add_argument("kind", help=KIND_NAMES)
    get.add_argument("name", nargs="?")
    get.set_defaults(func=lazy("cmd_get"))

    delete = commands.add_parser("delete", help="delete an object")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.set_defaults(func=lazy("cmd_delete"))

    run = commands.add_parser("run", help="execute an export definition now")
    run.add_argument("definition")
    run.add_argument("--wait", action="store_true", help="wait for the run to finish and print its summary")
    run.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a value for a query parameter (repeatable)"
    )
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    run.add_argument("--idempotency-key", help="a retried command with the same key returns the same run")
    run.set_defaults(func=lazy("cmd_run"))

    runs = commands.add_parser("runs", help="list runs, or show one with --id")
    runs.add_argument("--definition")
    runs.add_argument("--id")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=lazy("cmd_runs"))

    demo = commands.add_parser("demo-data", help="(re)create the demo members table")
    demo.add_argument("--members", type=int, default=10_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--url", help="SQLAlchemy URL (default: EXPORT_QUERY_STORE_URL)")
    demo.set_defaults(func=lazy("cmd_demo_data"))

    next_runs = commands.add_parser("next-runs", help="preview the next fire times of a definition's schedule")
    next_runs.add_argument("definition")
    next_runs.add_argument("-n", "--count", type=int, default=5)
    next_runs.set_defaults(func=lazy("cmd_next_runs"))

    dead_letters.add_commands(commands)
    database_commands.add_commands(commands)
    audit_commands.add_commands(commands)
    secret_commands.add_commands(commands)

    # Commands of the admin API only (EXPORT_API_URL).
    listing = commands.add_parser("list", help="(admin API) list objects of a kind")
    listing.add_argument("kind", help="profile, template, query, definition (or the kind's name)")
    listing.set_defaults(func=None)
    search = commands.add_parser("search", help="(admin API) search export definitions")
    search.add_argument("--name-contains")
    search.add_argument("--business-unit")
    search.add_argument("--priority", choices=["high", "normal", "low"])
    search.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    search.add_argument("--template")
    search.add_argument("--query")
    search.add_argument("--sort", default="name")
    search.add_argument("--page", type=int, default=1)
    search.add_argument("--page-size", type=int, default=50)
    search.set_defaults(func=None)
    describe = commands.add_parser("describe", help="(admin API) show one object (secrets masked)")
    describe.add_argument("kind")
    describe.add_argument("name")
    describe.set_defaults(func=None)
    copy = commands.add_parser("copy", help='copy an object ("Copy of …"; a copied schedule is disabled)')
    copy.add_argument("kind")
    copy.add_argument("name")
    copy.add_argument("--label")
    copy.add_argument("--name", dest="new_name")
    copy.set_defaults(func=lazy("cmd_copy"))
    dry = commands.add_parser("dry-run", help="render the first requests a definition would send (nothing is sent)")
    dry.add_argument("definition")
    dry.add_argument("--requests", type=int, default=3)
    dry.set_defaults(func=lazy("cmd_dry_run"))

    schemas = commands.add_parser("schemas", help="print the JSON Schema of every event")
    schemas.set_defaults(func=lazy("cmd_schemas"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CliSettings()
    # Warnings of the library (a plain-text secret, an unreachable broker) go to stderr, as a human reads
    # them: stdout is the command's answer, which scripts parse.
    configure_logging("WARNING", "console", "exportctl")
    if settings.api_url:
        from shared.cli.api_commands import API_COMMANDS, run_api_command

        if args.command in API_COMMANDS:
            from shared.cli.api import AdminApi

            return run_api_command(AdminApi(settings.api_url, settings.api_token), args.command, args)
    if args.func is None:
        return fail(f"'{args.command}' works through the admin API: set EXPORT_API_URL (and EXPORT_API_TOKEN)")
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
