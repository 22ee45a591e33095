"""exportctl's commands on the catalog directly (no ``EXPORT_API_URL``): each a thin caller of a use case.

Imported only when one of them runs, so that exportctl through the admin API starts without loading the
catalog, SQLAlchemy, Alembic or the SQL parser.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime

import yaml

from shared.application import objects as object_use_cases
from shared.application import runs as run_use_cases
from shared.application.dry_run import dry_run
from shared.cli.api import ALIASES
from shared.cli.api_commands import print_dry_run
from shared.cli.common import CliSettings, fail, parse_params, run_line, summary, wait_for_run
from shared.cli.direct import Direct, on_catalog
from shared.cli.manifests import ManifestError, load_manifests
from shared.domain.catalog_objects import KINDS, CatalogObject, ExportDefinition
from shared.domain.schedule import composer_of, next_fire_times
from shared.events import json_schemas


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
