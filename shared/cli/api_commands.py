"""exportctl's commands through the admin API (when one is configured): the twins of direct mode's.

Each takes an :class:`AdminApi` and the parsed arguments, prints what its direct-mode twin prints (the
same views), and returns the exit code; a refusal raises :class:`ApiError` with its status's code. Light
on purpose: nothing here loads the catalog, SQLAlchemy, Kafka or httpx (start-up under 0.3 s).
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Callable
from typing import Any

from shared.cli.api import AdminApi
from shared.cli.attempts_commands import api_attempts
from shared.cli.audit_commands import filters, print_entries
from shared.cli.dead_letter_views import api_list as api_dead_letters_list
from shared.cli.dead_letter_views import api_replay as api_dead_letters_replay
from shared.cli.delivery_commands import cmd_deliveries_api
from shared.cli.exits import OK, REFUSED, CliError
from shared.cli.kinds import COLLECTIONS, canonical_kind
from shared.cli.object_views import (
    not_computable_line,
    print_changes,
    print_dry_run,
    print_objects,
    print_schedule,
    schedule_preview,
)
from shared.cli.output import dump, lines, table
from shared.cli.progress import follow
from shared.cli.run_views import parse_run_id, print_cancelled, print_run, print_runs
from shared.cli.variables import parse_assignments

#: The largest page of the definition search.
PAGE_SIZE = 500


def _path(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _all_of(api: AdminApi, kind: str) -> list[dict[str, Any]]:
    """Every object of a kind (definitions a page at a time)."""
    collection = COLLECTIONS[kind]
    if kind != "ExportDefinition":
        objects: list[dict[str, Any]] = api.call("GET", f"/{collection}")
        return objects
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = api.call("GET", f"/{collection}", params={"page": page, "page_size": PAGE_SIZE})
        found += answer["items"]
        if len(found) >= answer["total"] or not answer["items"]:
            return found
        page += 1


def cmd_get(api: AdminApi, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    specs = [api.call("GET", f"/{COLLECTIONS[kind]}/{_path(args.name)}")] if args.name else _all_of(api, kind)
    print_objects(kind, specs, args.output)
    return OK


def cmd_list(api: AdminApi, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    print_objects(kind, _all_of(api, kind), args.output)
    return OK


def cmd_describe(api: AdminApi, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    spec = api.call("GET", f"/{COLLECTIONS[kind]}/{_path(args.name)}")
    print_objects(kind, [spec], "json" if args.output == "json" else "yaml")
    if kind == "ExportDefinition" and args.output != "json":
        preview = api.call("GET", f"/export-definitions/{_path(args.name)}/schedule/preview", params={"count": 3})
        if preview.get("not_computable"):
            print(f"# {not_computable_line(preview['not_computable'])}")
        elif preview["cron"]:
            upcoming = ", ".join(preview["fire_times"])
            print(f"# schedule: cron '{preview['cron']}' ({preview['timezone']}), next: {upcoming}")
    return OK


def cmd_search(api: AdminApi, args: argparse.Namespace) -> int:
    names = ("name_contains", "business_unit", "priority", "enabled", "template", "query", "sort", "page", "page_size")
    page = api.call("GET", "/export-definitions", params={name: getattr(args, name) for name in names})
    if args.output != "table":
        dump(page, args.output)
        return OK
    rows = [
        (
            d["name"],
            d.get("business_unit"),
            d["priority"],
            "enabled" if d["schedule"]["enabled"] else "disabled",
            d["template"],
        )
        for d in page["items"]
    ]
    table(("NAME", "BUSINESS UNIT", "PRIORITY", "SCHEDULE", "TEMPLATE"), rows)
    print(f"({len(page['items'])} of {page['total']}, page {page['page']})")
    return OK


def cmd_delete(api: AdminApi, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    api.call("DELETE", f"/{COLLECTIONS[kind]}/{_path(args.name)}")
    print(f"{kind}/{args.name} deleted")
    return OK


def cmd_copy(api: AdminApi, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    body = {k: v for k, v in {"label": args.label, "name": args.new_name}.items() if v}
    copy = api.call("POST", f"/{COLLECTIONS[kind]}/{_path(args.name)}/copy", json_body=body)
    lines([f'{kind}/{copy["name"]} created ("{copy.get("label")}")'])
    return OK


def cmd_dry_run(api: AdminApi, args: argparse.Namespace) -> int:
    result = api.call(
        "POST", f"/export-definitions/{_path(args.definition)}/dry-run", params={"requests": args.requests}
    )
    print_dry_run(result["requests"])
    return OK


def cmd_runs(api: AdminApi, args: argparse.Namespace) -> int:
    if args.id:
        view = api.call("GET", f"/runs/{parse_run_id(args.id)}")
        # Runs replaying this one: the API has no call for them, they are among the definition's runs.
        runs = api.call("GET", "/runs", params={"definition": view["definition"], "limit": 500})
        replays = sorted((r for r in runs if r.get("replay_of") == view["run_id"]), key=lambda r: r["run_id"])
        print_run(view, replays, args.output)
        return OK
    print_runs(api.call("GET", "/runs", params={"limit": args.limit, "definition": args.definition}), args.output)
    return OK


def cmd_run(api: AdminApi, args: argparse.Namespace) -> int:
    parameters = parse_assignments(args.param, "--param")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    # The flag only when given: an admin API older than it refuses the field.
    allow = {"allow_mass_removal": True} if args.allow_mass_removal else {}
    run = api.call(
        "POST",
        f"/export-definitions/{_path(args.definition)}/runs",
        json_body={"parameters": parameters, **allow},
        headers=headers,
    )
    print(f"run {run['run_id']} requested for '{args.definition}'", flush=True)
    if not args.wait:
        return OK
    return follow(lambda: api.call("GET", f"/runs/{run['run_id']}"), run["run_id"], args.timeout, poll_seconds=0.5)


def cmd_cancel(api: AdminApi, args: argparse.Namespace) -> int:
    print_cancelled(api.call("POST", f"/runs/{parse_run_id(args.run_id)}/cancel"))
    return OK


def cmd_next_runs(api: AdminApi, args: argparse.Namespace) -> int:
    name = _path(args.definition)
    definition = api.call("GET", f"/export-definitions/{name}")
    preview = api.call("GET", f"/export-definitions/{name}/schedule/preview", params={"count": args.count})
    print_schedule(
        schedule_preview(
            definition["name"],
            definition["schedule"],
            preview["cron"],
            preview["fire_times"],
            preview.get("not_computable"),
        ),
        args.output,
    )
    return OK


def cmd_apply(api: AdminApi, args: argparse.Namespace) -> int:
    """Apply every manifest object through the API at once (all or nothing); print what changes.

    ``--diff`` only prints what would change."""
    from shared.cli.manifests import ManifestError, load_manifests  # loaded when used (validates locally)
    from shared.domain.catalog_objects import kind_of, stored_form

    if args.skip_discovery:
        raise CliError("--skip-discovery works on the catalog directly only: the admin API always discovers columns")
    try:
        objects = load_manifests(args.file, parse_assignments(args.var, "--var"))
    except ManifestError as exc:
        raise CliError("invalid manifest\n  " + "\n  ".join(exc.problems), REFUSED) from None
    documents = [{"kind": kind_of(obj), "spec": stored_form(obj)} for obj in objects]
    result = api.call("POST", "/apply", params={"dry_run": args.diff}, json_body={"objects": documents})
    print_changes(result["changes"], args.diff)
    return OK


def cmd_audit(api: AdminApi, args: argparse.Namespace) -> int:
    print_entries(api.call("GET", "/audit", params=filters(args)), args.details, args.output)
    return OK


API_COMMANDS: dict[str, Callable[[AdminApi, argparse.Namespace], int]] = {
    "cmd_apply": cmd_apply,
    "cmd_attempts": api_attempts,
    "cmd_audit": cmd_audit,
    "cmd_cancel": cmd_cancel,
    "cmd_copy": cmd_copy,
    "cmd_dead_letters_list": api_dead_letters_list,
    "cmd_dead_letters_replay": api_dead_letters_replay,
    "cmd_delete": cmd_delete,
    "cmd_deliveries": cmd_deliveries_api,
    "cmd_describe": cmd_describe,
    "cmd_dry_run": cmd_dry_run,
    "cmd_get": cmd_get,
    "cmd_list": cmd_list,
    "cmd_next_runs": cmd_next_runs,
    "cmd_run": cmd_run,
    "cmd_runs": cmd_runs,
    "cmd_search": cmd_search,
}


def run_api_command(api: AdminApi, name: str, args: argparse.Namespace) -> int:
    """Run the API command ``name`` (a refusal propagates as :class:`ApiError`, a :class:`CliError`)."""
    try:
        return API_COMMANDS[name](api, args)
    finally:
        api.close()
