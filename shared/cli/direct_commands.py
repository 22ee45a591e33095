"""exportctl's commands on the catalog directly (no admin API configured): each a thin caller of a use case.
(``run`` and ``runs`` are in :mod:`shared.cli.direct_runs`.)

Imported only when one of them runs, so that exportctl through the admin API starts without loading the
catalog, SQLAlchemy, Alembic or the SQL parser. They print what their API twins in
:mod:`shared.cli.api_commands` print, through the same views.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from shared.application import objects as object_use_cases
from shared.application.dry_run import dry_run
from shared.cli.common import CliSettings
from shared.cli.direct import Direct, on_catalog
from shared.cli.exits import OK, REFUSED, CliError
from shared.cli.kinds import canonical_kind
from shared.cli.manifests import ManifestError, load_manifests
from shared.cli.object_views import (
    not_computable_line,
    print_changes,
    print_dry_run,
    print_objects,
    print_schedule,
    schedule_preview,
)
from shared.cli.output import lines
from shared.cli.variables import parse_assignments
from shared.domain.catalog_objects import KINDS, CatalogObject, ExportDefinition
from shared.domain.instants import json_instant
from shared.domain.schedule import next_fire_times
from shared.events import json_schemas


def _kind(name: str) -> type[CatalogObject]:
    return KINDS[canonical_kind(name)]


def _spec(obj: CatalogObject) -> dict[str, Any]:
    """An object as the admin API shows it (secrets masked): a manifest's ``spec``."""
    spec: dict[str, Any] = obj.model_dump(mode="json")
    return spec


def cmd_apply(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        objects = load_manifests(args.file, parse_assignments(args.var, "--var"))
    except ManifestError as exc:
        raise CliError("invalid manifest\n  " + "\n  ".join(exc.problems), REFUSED) from None

    def apply(context: Direct) -> int:
        checks = context.checks(
            discover=not args.skip_discovery,
            instead="or give --skip-discovery to apply without running saved queries to discover their columns",
        )
        changes = object_use_cases.apply_objects(
            context.actor, objects, store=context.stores.definitions, checks=checks, dry_run=args.diff
        )
        for warning in checks.warnings:
            print(f"exportctl: warning: {warning}", file=sys.stderr)
        print_changes([vars(change) for change in changes], args.diff)
        return OK

    return on_catalog(settings, apply)


def cmd_get(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def get(context: Direct) -> int:
        store = context.stores.definitions
        objects = [store.get(kind, args.name)] if args.name else store.list_objects(kind)
        print_objects(kind.__name__, [_spec(obj) for obj in objects], args.output)
        return OK

    return on_catalog(settings, get)


def cmd_describe(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def describe(context: Direct) -> int:
        obj = context.stores.definitions.get(kind, args.name)
        print_objects(kind.__name__, [_spec(obj)], "json" if args.output == "json" else "yaml")
        if not isinstance(obj, ExportDefinition) or args.output == "json":
            return OK
        error = context.stores.definitions.schedules_not_computable([obj.name]).get(obj.name)
        if error is not None:
            print(f"# {not_computable_line(error)}")
        elif obj.schedule.repeat is not None:
            upcoming = ", ".join(str(json_instant(t)) for t in next_fire_times(obj.schedule, datetime.now(UTC), 3))
            print(f"# schedule: cron '{obj.schedule.repeat.expression}' ({obj.schedule.timezone}), next: {upcoming}")
        return OK

    return on_catalog(settings, describe)


def cmd_list(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def listing(context: Direct) -> int:
        print_objects(kind.__name__, [_spec(obj) for obj in context.stores.definitions.list_objects(kind)], args.output)
        return OK

    return on_catalog(settings, listing)


def cmd_delete(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def delete(context: Direct) -> int:
        object_use_cases.delete_object(context.actor, kind, args.name, store=context.stores.definitions)
        print(f"{kind.__name__}/{args.name} deleted")
        return OK

    return on_catalog(settings, delete)


def cmd_copy(settings: CliSettings, args: argparse.Namespace) -> int:
    kind = _kind(args.kind)

    def copy(context: Direct) -> int:
        _, made = object_use_cases.copy_object(
            context.actor,
            kind,
            args.name,
            store=context.stores.definitions,
            checks=context.checks(discover=False),  # a copy keeps its original's columns: no member store opened
            label=args.label,
            new_name=args.new_name,
        )
        lines([f'{kind.__name__}/{made.name} created ("{getattr(made, "label", None)}")'])
        return OK

    return on_catalog(settings, copy)


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
        return OK

    return on_catalog(settings, render)


def cmd_demo_data(settings: CliSettings, args: argparse.Namespace) -> int:
    from shared.catalog.engine import make_engine, shown_url
    from shared.querystore.demo_data import create_demo_members

    url = args.url or settings.query_store_url
    started = time.perf_counter()
    engine = make_engine(url)
    try:
        count = create_demo_members(engine, args.members, seed=args.seed)
    finally:
        engine.dispose()
    print(f"{count} demo members written to {shown_url(url)} in {time.perf_counter() - started:.1f}s")
    return OK


def cmd_next_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    def preview(context: Direct) -> int:
        definition = context.stores.definitions.get(ExportDefinition, args.definition)
        schedule = definition.schedule
        # Not computed again when the scheduler could not (as the admin API's preview): the same maths would fail.
        error = context.stores.definitions.schedules_not_computable([definition.name]).get(definition.name)
        fire_times = [] if error else next_fire_times(schedule, datetime.now(UTC), args.count)
        cron = schedule.repeat.expression if schedule.repeat is not None else None
        times = [str(json_instant(t)) for t in fire_times]  # as the API writes them
        preview = schedule_preview(definition.name, schedule.model_dump(mode="json"), cron, times, error)
        print_schedule(preview, args.output)
        return OK

    return on_catalog(settings, preview)


def cmd_schemas(_settings: CliSettings, _args: argparse.Namespace) -> int:
    json.dump(json_schemas(), sys.stdout, indent=2)
    print()
    return OK
