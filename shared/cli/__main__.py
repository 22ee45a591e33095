"""``exportctl``: apply manifests, run exports, follow runs, create demo members.

Reads the same ``EXPORT_*`` settings as the services (catalog URL, Kafka, topic prefix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import yaml

from shared.application import objects as object_use_cases
from shared.application import runs as run_use_cases
from shared.application.dry_run import dry_run
from shared.cli import audit_commands, database_commands, dead_letters, secret_commands
from shared.cli.api import ALIASES, AdminApi
from shared.cli.api_commands import API_COMMANDS, print_dry_run, run_api_command
from shared.cli.common import CliSettings, fail, parse_params, run_line, summary, wait_for_run
from shared.cli.direct import Direct, on_catalog
from shared.cli.manifests import ManifestError, load_manifests
from shared.domain.catalog_objects import KINDS, CatalogObject, ExportDefinition
from shared.domain.schedule import composer_of, next_fire_times
from shared.events import json_schemas
from shared.log import configure_logging


def cmd_apply(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        objects = load_manifests(args.file)
    except ManifestError as exc:
        return fail("invalid manifest\n  " + "\n  ".join(exc.problems))

    def apply(context: Direct) -> int:
        checks = context.checks(discover=not args.skip_discovery)
        changes = object_use_cases.apply_objects(
            context.actor, objects, store=context.stores.definitions, checks=checks, dry_run=args.diff
        )
        for warning in checks.warnings:
            print(f"exportctl: warning: {warning}", file=sys.stderr)
        for change in changes:
            would = "would be " if args.diff and change.change != "unchanged" else ""
            print(f"{change.kind}/{change.name} {would}{change}")
        return 0

    return on_catalog(settings, apply)


def _kind(name: str) -> type[CatalogObject]:
    """A kind by name, plural or short alias (``query``, ``definition``…), as in API mode."""
    name = ALIASES.get(name.lower().rstrip("s"), name)
    for kind, model in KINDS.items():
        if name.lower() in {kind.lower(), kind.lower() + "s"}:
            return model
    raise SystemExit(fail(f"unknown kind '{name}'; kinds: {', '.join(KINDS)}"))


def cmd_get(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def get(context: Direct) -> int:
        store = context.stores.definitions
        objects = [store.get(kind, args.name)] if args.name else store.list_objects(kind)
        documents = [{"kind": kind.__name__, "spec": obj.model_dump(mode="json")} for obj in objects]
        yaml.safe_dump_all(documents, sys.stdout, sort_keys=False, allow_unicode=True)
        return 0

    return on_catalog(settings, get)


def cmd_delete(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def delete(context: Direct) -> int:
        object_use_cases.delete_object(context.actor, kind, args.name, store=context.stores.definitions)
        print(f"{kind.__name__}/{args.name} deleted")
        return 0

    return on_catalog(settings, delete)


def cmd_copy(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def copy(context: Direct) -> int:
        made = object_use_cases.copy_object(
            context.actor, kind, args.name, store=context.stores.definitions, label=args.label, new_name=args.new_name
        )
        print(f'{args.kind}/{made.name} created ("{getattr(made, "label", None)}")')
        return 0

    return on_catalog(settings, copy)


def cmd_run(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        parameters = parse_params(args.param)
    except ValueError as exc:
        return fail(str(exc))

    def run(context: Direct) -> int:
        record = run_use_cases.request_run(
            context.actor,
            args.definition,
            store=context.stores.definitions,
            runs=context.stores.runs,
            publisher=context.publisher(),
            parameters=parameters,
            idempotency_key=args.idempotency_key,
        )
        print(f"run {record.run_id} requested for '{args.definition}'", flush=True)
        return wait_for_run(context.stores.runs, record.run_id, args.timeout) if args.wait else 0

    return on_catalog(settings, run)


def cmd_dry_run(settings: CliSettings, args: argparse.Namespace) -> int:
    def render(context: Direct) -> int:
        result = dry_run(
            context.actor,
            args.definition,
            store=context.stores.definitions,
            members=context.members(),
            requests=args.requests,
        )
        print_dry_run(
            [
                {
                    "method": r.method,
                    "url": r.url,
                    "headers": r.headers,
                    "body": r.content.decode("utf-8", errors="replace"),
                    "members": count,
                }
                for r, count in result.requests
            ]
        )
        return 0

    return on_catalog(settings, render)


def cmd_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    def runs(context: Direct) -> int:
        store = context.stores.runs
        if args.id:
            record = store.get_run(uuid.UUID(args.id))
            if record is None:
                return fail(f"run {args.id} is not known (yet)")
            print(summary(record))
            for replay in store.replays_of(record.run_id):
                print(f"  replayed by run {replay.run_id}: {replay.status.value}, delivered {replay.delivered}")
            return 0
        for record in store.list_runs(args.definition, args.limit):
            print(run_line(record))
        return 0

    return on_catalog(settings, runs)


def cmd_demo_data(settings: CliSettings, args: argparse.Namespace) -> int:
    from shared.catalog import make_engine
    from shared.querystore.demo_data import create_demo_members

    url = args.url or settings.query_store_url
    started = time.perf_counter()
    count = create_demo_members(make_engine(url), args.members, seed=args.seed)
    print(f"{count} demo members written to {url} in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_next_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    return on_catalog(settings, lambda context: _print_next_runs(context, args))


def _print_next_runs(context: Direct, args: argparse.Namespace) -> int:
    definition = context.stores.definitions.get(ExportDefinition, args.definition)
    schedule = definition.schedule
    if schedule.once is not None:
        print(f"once on {schedule.once.date} at {schedule.once.time:%H:%M} ({schedule.timezone})")
    elif schedule.repeat is not None:
        shape = composer_of(schedule.repeat.expression)
        described = shape.model_dump(exclude_none=True, mode="json") if shape else "advanced mode"
        print(f"cron '{schedule.repeat.expression}' ({schedule.timezone}): {described}")
    else:
        print("no recurrence")
    if not schedule.enabled:
        print("schedule disabled: it will not fire; the times it would fire:")
    for instant in next_fire_times(schedule, datetime.now(UTC), args.count):
        local = instant.astimezone(schedule.zone)
        print(f"  {local:%Y-%m-%d %H:%M %Z}  ({instant:%Y-%m-%d %H:%M} UTC)")
    return 0


def cmd_schemas(_settings: CliSettings, _args: argparse.Namespace) -> int:
    json.dump(json_schemas(), sys.stdout, indent=2)
    print()
    return 0


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
    apply.set_defaults(func=cmd_apply)

    get = commands.add_parser("get", help="print objects as YAML (secrets masked)")
    get.add_argument("kind", help=", ".join(KINDS))
    get.add_argument("name", nargs="?")
    get.set_defaults(func=cmd_get)

    delete = commands.add_parser("delete", help="delete an object")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_delete)

    run = commands.add_parser("run", help="execute an export definition now")
    run.add_argument("definition")
    run.add_argument("--wait", action="store_true", help="wait for the run to finish and print its summary")
    run.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a value for a query parameter (repeatable)"
    )
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    run.add_argument("--idempotency-key", help="a retried command with the same key returns the same run")
    run.set_defaults(func=cmd_run)

    runs = commands.add_parser("runs", help="list runs, or show one with --id")
    runs.add_argument("--definition")
    runs.add_argument("--id")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    demo = commands.add_parser("demo-data", help="(re)create the demo members table")
    demo.add_argument("--members", type=int, default=10_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--url", help="SQLAlchemy URL (default: EXPORT_QUERY_STORE_URL)")
    demo.set_defaults(func=cmd_demo_data)

    next_runs = commands.add_parser("next-runs", help="preview the next fire times of a definition's schedule")
    next_runs.add_argument("definition")
    next_runs.add_argument("-n", "--count", type=int, default=5)
    next_runs.set_defaults(func=cmd_next_runs)

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
    copy.set_defaults(func=cmd_copy)
    dry = commands.add_parser("dry-run", help="render the first requests a definition would send (nothing is sent)")
    dry.add_argument("definition")
    dry.add_argument("--requests", type=int, default=3)
    dry.set_defaults(func=cmd_dry_run)

    schemas = commands.add_parser("schemas", help="print the JSON Schema of every event")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CliSettings()
    # Warnings of the library (a plain-text secret, an unreachable broker) go to stderr, as a human reads
    # them: stdout is the command's answer, which scripts parse.
    configure_logging("WARNING", "console", "exportctl")
    if settings.api_url and args.command in API_COMMANDS:
        return run_api_command(AdminApi(settings.api_url, settings.api_token), args.command, args)
    if args.func is None:
        return fail(f"'{args.command}' works through the admin API: set EXPORT_API_URL (and EXPORT_API_TOKEN)")
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
