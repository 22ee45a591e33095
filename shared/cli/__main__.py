"""``exportctl``: apply manifests, run exports, follow runs, create demo members.

Reads the same ``EXPORT_*`` settings as the services (catalog URL, Kafka, topic prefix).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import yaml

from shared.catalog import Catalog, NotFound
from shared.cli import dead_letters
from shared.cli.api import AdminApi
from shared.cli.api_commands import API_COMMANDS, run_api_command
from shared.cli.common import CliSettings, fail, parse_params, run_line, summary, wait_for_run
from shared.cli.manifests import ManifestError, load_manifests
from shared.domain.catalog_objects import (
    KINDS,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    OAuth2ClientCredentials,
    SavedQuery,
    kind_of,
    query_consistency_problems,
    references,
)
from shared.domain.destinations import DestinationPolicy
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.rendering import TemplateRenderError, render_request
from shared.domain.schedule import composer_of, next_fire_times
from shared.events import MemberBatch, RunRequested, Trigger, json_schemas
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.querystore import MemberReader, QueryError


def cmd_apply(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        objects = load_manifests(args.file)
    except ManifestError as exc:
        return fail("invalid manifest\n  " + "\n  ".join(exc.problems))
    catalog = Catalog.from_url(settings.catalog_url)
    declared = {(kind_of(o), o.name) for o in objects}
    missing = []
    for obj in objects:
        for kind, name, field in references(obj):
            if (kind.__name__, name) in declared:
                continue
            try:
                catalog.get(kind, name)
            except NotFound:
                missing.append(f"{kind_of(obj)} '{obj.name}': field '{field}': {kind.__name__} '{name}' does not exist")
    if missing:
        return fail("unresolved references\n  " + "\n  ".join(missing))
    problems = destination_problems(objects, DestinationPolicy.parse(settings.allowed_destinations))
    if not args.skip_discovery:
        reader = MemberReader.from_url(settings.query_store_url)
        try:
            objects = discover_columns(objects, reader)
            problems += template_problems(objects, resolver(objects, catalog), reader)
        except ManifestError as exc:
            return fail("queries do not fit the query store\n  " + "\n  ".join(exc.problems))
        finally:
            reader.close()
    resolve = resolver(objects, catalog)
    for obj in objects:
        if isinstance(obj, ExportDefinition):
            query = resolve(SavedQuery, obj.query)
            problems += [f"ExportDefinition '{obj.name}': {p}" for p in query_consistency_problems(obj, query)]
    if problems:
        return fail("refused\n  " + "\n  ".join(problems))
    for obj in objects:
        print(f"{kind_of(obj)}/{obj.name} {catalog.apply(obj)}")
    return 0


def destination_problems(objects: list[CatalogObject], policy: DestinationPolicy) -> list[str]:
    """Profiles whose base URL (or OAuth token URL) resolves to a refused address (the SSRF guard at save)."""
    problems = []
    for obj in objects:
        if not isinstance(obj, ConnectionProfile):
            continue
        urls = [("base_url", obj.base_url)]
        if isinstance(obj.auth, OAuth2ClientCredentials):
            urls.append(("auth.token_url", obj.auth.token_url))
        for field, url in urls:
            host = urlsplit(url).hostname or ""
            try:
                addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
            except OSError:
                # Not resolvable from here (split DNS, no network): checked again at every connection.
                print(f"exportctl: warning: {field} host {host} does not resolve from here", file=sys.stderr)
                continue
            for address in sorted(addresses):
                refusal = policy.refusal(host, ipaddress.ip_address(str(address).split("%")[0]))
                if refusal is not None:
                    problems.append(f"ConnectionProfile '{obj.name}': field '{field}': {refusal}")
                    break
    return problems


T = TypeVar("T", bound=CatalogObject)


class Resolve(Protocol):
    """Finds an object of a kind by name."""

    def __call__(self, kind: type[T], name: str) -> T: ...


def resolver(objects: list[CatalogObject], catalog: Catalog) -> Resolve:
    """Look an object up among those being applied, else in the catalog (references are checked before)."""
    declared = {(kind_of(o), o.name): o for o in objects}

    def lookup(kind: type[T], name: str) -> T:
        found = declared.get((kind.__name__, name))
        return found if isinstance(found, kind) else catalog.get(kind, name)

    return lookup


def template_problems(objects: list[CatalogObject], lookup: Resolve, reader: MemberReader) -> list[str]:
    """Templates that do not render valid requests for their query's first members (read from the store)."""
    problems = []
    for obj in objects:
        if not isinstance(obj, HttpTemplate):
            continue
        query, profile = lookup(SavedQuery, obj.query), lookup(ConnectionProfile, obj.profile)
        try:
            values = bind_values(query.parameters)
        except ParameterError:
            continue  # a required parameter has no default: the query cannot run without a run request
        try:
            page = next(reader.pages(query, page_size=min(obj.batch_size, 3), parameters=values), None)
        except QueryError:
            continue  # reported with the query
        if page is None:
            continue  # no member to render with
        sample = MemberBatch(
            run_id=uuid.UUID(int=0), definition="(apply check)", template=obj.name, batch_index=0, members=page.members
        )
        try:
            render_request(obj, profile, sample)
        except TemplateRenderError as exc:
            problems.append(f"HttpTemplate '{obj.name}': {exc} (rendered with the query's first members)")
    return problems


def discover_columns(objects: list[CatalogObject], reader: MemberReader) -> list[CatalogObject]:
    """Saved queries with ``columns`` read from the query store; ManifestError if one fails or lacks its key."""
    discovered: list[CatalogObject] = []
    problems = []
    for obj in objects:
        if isinstance(obj, SavedQuery):
            try:
                columns = reader.columns(obj)
            except QueryError as exc:
                problems.append(f"SavedQuery '{obj.name}': field 'sql': {exc}")
                continue
            if obj.key_column not in columns:
                problems.append(
                    f"SavedQuery '{obj.name}': field 'key_column': the query returns no column '{obj.key_column}' "
                    f"(it returns: {', '.join(columns)})"
                )
                continue
            obj = obj.model_copy(update={"columns": columns})
        discovered.append(obj)
    if problems:
        raise ManifestError(problems)
    return discovered


def _kind(name: str) -> type[CatalogObject]:
    for kind, model in KINDS.items():
        if name.lower() in {kind.lower(), kind.lower() + "s"}:
            return model
    raise SystemExit(fail(f"unknown kind '{name}'; kinds: {', '.join(KINDS)}"))


def cmd_get(settings: CliSettings, args: argparse.Namespace) -> int:
    catalog = Catalog.from_url(settings.catalog_url)
    kind = _kind(args.kind)
    try:
        objects = [catalog.get(kind, args.name)] if args.name else catalog.list_objects(kind)
    except NotFound as exc:
        return fail(str(exc))
    documents = [{"kind": kind.__name__, "spec": obj.model_dump(mode="json")} for obj in objects]
    yaml.safe_dump_all(documents, sys.stdout, sort_keys=False, allow_unicode=True)
    return 0


def cmd_delete(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        Catalog.from_url(settings.catalog_url).delete(_kind(args.kind), args.name)
    except NotFound as exc:
        return fail(str(exc))
    print(f"{_kind(args.kind).__name__}/{args.name} deleted")
    return 0


def cmd_run(settings: CliSettings, args: argparse.Namespace) -> int:
    catalog = Catalog.from_url(settings.catalog_url)
    try:
        definition = catalog.get(ExportDefinition, args.definition)
        query = catalog.get(SavedQuery, definition.query)
    except NotFound as exc:
        return fail(str(exc))
    try:
        parameters = parse_params(args.param)
    except ValueError as exc:
        return fail(str(exc))
    try:
        bind_values(query.parameters, parameters, definition.parameters)  # refuse now, not in the extractor
    except ParameterError as exc:
        return fail(str(exc))
    request = RunRequested(
        definition=args.definition, trigger=Trigger.MANUAL, requested_by=getpass.getuser(), parameters=parameters
    )
    ensure_topics(settings, [settings.topics.run_requests])
    producer = make_producer(settings, "exportctl")
    try:
        produce_and_wait(producer, [Outgoing(settings.topics.run_requests, str(request.run_id), request.to_bytes())])
    finally:
        producer.close()
    print(f"run {request.run_id} requested for '{args.definition}'")
    if not args.wait:
        return 0
    return wait_for_run(catalog, request.run_id, args.timeout)


def cmd_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    catalog = Catalog.from_url(settings.catalog_url)
    if args.id:
        record = catalog.get_run(uuid.UUID(args.id))
        if record is None:
            return fail(f"run {args.id} is not known (yet)")
        print(summary(record))
        for replay in catalog.replays_of(record.run_id):
            print(f"  replayed by run {replay.run_id}: {replay.status.value}, delivered {replay.delivered}")
        return 0
    for record in catalog.list_runs(args.definition, args.limit):
        print(run_line(record))
    return 0


def cmd_demo_data(settings: CliSettings, args: argparse.Namespace) -> int:
    from shared.catalog import make_engine
    from shared.querystore.demo_data import create_demo_members

    url = args.url or settings.query_store_url
    started = time.perf_counter()
    count = create_demo_members(make_engine(url), args.members, seed=args.seed)
    print(f"{count} demo members written to {url} in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_next_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        definition = Catalog.from_url(settings.catalog_url).get(ExportDefinition, args.definition)
    except NotFound as exc:
        return fail(str(exc))
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
    apply.add_argument(
        "--diff", action="store_true", help="with the admin API: print what would change, change nothing"
    )
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
    run.add_argument("--idempotency-key", help="with the admin API: a retried command returns the same run")
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
    copy = commands.add_parser("copy", help='(admin API) copy an object ("Copy of …"; a copied schedule is disabled)')
    copy.add_argument("kind")
    copy.add_argument("name")
    copy.add_argument("--label")
    copy.add_argument("--name", dest="new_name")
    copy.set_defaults(func=None)
    dry_run = commands.add_parser("dry-run", help="(admin API) render the first requests a definition would send")
    dry_run.add_argument("definition")
    dry_run.add_argument("--requests", type=int, default=3)
    dry_run.set_defaults(func=None)

    schemas = commands.add_parser("schemas", help="print the JSON Schema of every event")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CliSettings()
    if settings.api_url and args.command in API_COMMANDS:
        return run_api_command(AdminApi(settings.api_url, settings.api_token), args.command, args)
    if args.func is None:
        return fail(f"'{args.command}' works through the admin API: set EXPORT_API_URL (and EXPORT_API_TOKEN)")
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
