"""exportctl's commands over the admin API (when ``EXPORT_API_URL`` is set).

Each takes the parsed arguments and an :class:`AdminApi`, prints for a human, and returns the exit
code: 0 done, 1 the run did not succeed, 2 refused (the API's reason on stderr).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.cli.api import AdminApi, ApiError, collection_of, record_of
from shared.cli.audit_commands import filters, print_entries
from shared.cli.common import fail, parse_params, run_line, summary


def cmd_list(api: AdminApi, args: argparse.Namespace) -> int:
    collection = collection_of(args.kind)
    if collection == "export-definitions":
        return _print_definitions(api, {"page_size": 500})
    for obj in api.call("GET", f"/{collection}"):
        print(f"{obj['name']:<40} {obj.get('label') or ''}")
    return 0


def cmd_search(api: AdminApi, args: argparse.Namespace) -> int:
    names = ("name_contains", "business_unit", "priority", "enabled", "template", "query", "sort", "page", "page_size")
    return _print_definitions(api, {name: getattr(args, name) for name in names})


def _print_definitions(api: AdminApi, filters: dict[str, Any]) -> int:
    """One page of the definition search, a line each."""
    page = api.call("GET", "/export-definitions", params={k: v for k, v in filters.items() if v is not None})
    for d in page["items"]:
        enabled = "enabled" if d["schedule"]["enabled"] else "disabled"
        print(f"{d['name']:<36} {d.get('business_unit') or '-':<12} {d['priority']:<7} {enabled:<9} {d['template']}")
    print(f"({len(page['items'])} of {page['total']}, page {page['page']})")
    return 0


def cmd_describe(api: AdminApi, args: argparse.Namespace) -> int:
    collection = collection_of(args.kind)
    print(yaml.safe_dump(api.call("GET", f"/{collection}/{args.name}"), sort_keys=False).rstrip())
    if collection == "export-definitions":
        preview = api.call("GET", f"/export-definitions/{args.name}/schedule/preview", params={"count": 3})
        if preview["cron"]:
            upcoming = ", ".join(preview["fire_times"])
            print(f"# schedule: cron '{preview['cron']}' ({preview['timezone']}), next: {upcoming}")
    return 0


def cmd_delete(api: AdminApi, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/{collection_of(args.kind)}/{args.name}")
    print(f"{args.kind}/{args.name} deleted")
    return 0


def cmd_copy(api: AdminApi, args: argparse.Namespace) -> int:
    body = {k: v for k, v in {"label": args.label, "name": args.new_name}.items() if v}
    copy = api.call("POST", f"/{collection_of(args.kind)}/{args.name}/copy", json=body)
    print(f'{args.kind}/{copy["name"]} created ("{copy.get("label")}")')
    return 0


def cmd_dry_run(api: AdminApi, args: argparse.Namespace) -> int:
    result = api.call("POST", f"/export-definitions/{args.definition}/dry-run", params={"requests": args.requests})
    print_dry_run(result["requests"])
    return 0


def print_dry_run(requests: list[dict[str, Any]]) -> None:
    """Rendered requests as a human reads them (method and URL, headers, body)."""
    if not requests:
        print("the query returns no member: nothing would be sent")
    for index, request in enumerate(requests, 1):
        print(f"--- request {index}: {request['members']} member(s)")
        print(f"{request['method']} {request['url']}")
        for name, value in request["headers"].items():
            print(f"{name}: {value}")
        print(f"\n{request['body']}")


def cmd_runs(api: AdminApi, args: argparse.Namespace) -> int:
    if args.id:
        print(summary(record_of(api.call("GET", f"/runs/{args.id}"))))
        return 0
    params: dict[str, Any] = {"limit": args.limit}
    if args.definition:
        params["definition"] = args.definition
    for view in api.call("GET", "/runs", params=params):
        record = record_of(view)
        print(run_line(record))
    return 0


def cmd_run(api: AdminApi, args: argparse.Namespace) -> int:
    try:
        parameters = parse_params(args.param)
    except ValueError as exc:
        return fail(str(exc))
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    run = api.call(
        "POST", f"/export-definitions/{args.definition}/runs", json={"parameters": parameters}, headers=headers
    )
    print(f"run {run['run_id']} requested for '{args.definition}'", flush=True)
    return follow(api, run["run_id"], args.timeout) if args.wait else 0


def follow(api: AdminApi, run_id: str, timeout: float) -> int:
    """A progress bar of members delivered (and failed) out of those read, until the run is final; its summary."""
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("queued", total=None)
        while time.monotonic() < deadline:
            view = api.call("GET", f"/runs/{run_id}")
            total = view["extracted"] if view["extraction_complete"] else None
            progress.update(task, description=view["status"], completed=view["delivered"] + view["failed"], total=total)
            if view["status"] not in ("queued", "extracting", "dispatching"):
                break
            time.sleep(0.5)  # polling the API at a human pace
        else:
            return fail(f"run {run_id} did not finish within {timeout:.0f}s")
    record = record_of(view)
    print(summary(record))
    return 0 if record.status.value == "succeeded" else 1


def cmd_apply(api: AdminApi, args: argparse.Namespace) -> int:
    """Apply every manifest object through the API at once (all or nothing); print what changes.

    ``--diff`` only prints what would change."""
    from shared.cli.manifests import ManifestError, parse_documents  # loaded when used (start-up time)
    from shared.domain.catalog_objects import kind_of, stored_form

    if args.skip_discovery:
        return fail("--skip-discovery works on the catalog directly only: the admin API always discovers columns")
    documents = []
    for path in args.file:
        try:
            objects = parse_documents(Path(path).read_text(), str(path))
        except ManifestError as exc:
            return fail("invalid manifest\n  " + "\n  ".join(exc.problems))
        except OSError as exc:
            return fail(f"{path}: cannot be read ({exc.strerror})")
        documents += [{"kind": kind_of(obj), "spec": stored_form(obj)} for obj in objects]
    result = api.call("POST", "/apply", params={"dry_run": args.diff}, json={"objects": documents})
    for change in result["changes"]:
        fields = f" ({', '.join(change['fields'])})" if change["fields"] else ""
        would = "would be " if args.diff and change["change"] != "unchanged" else ""
        print(f"{change['kind']}/{change['name']} {would}{change['change']}{fields}")
    return 0


def cmd_audit(api: AdminApi, args: argparse.Namespace) -> int:
    print_entries(api.call("GET", "/audit", params=filters(args)), args.details)
    return 0


API_COMMANDS = {
    "audit": cmd_audit,
    "list": cmd_list,
    "search": cmd_search,
    "describe": cmd_describe,
    "delete": cmd_delete,
    "copy": cmd_copy,
    "dry-run": cmd_dry_run,
    "runs": cmd_runs,
    "run": cmd_run,
    "apply": cmd_apply,
}


def run_api_command(api: AdminApi, command: str, args: argparse.Namespace) -> int:
    try:
        return API_COMMANDS[command](api, args)
    except ApiError as exc:
        return fail(str(exc))
    finally:
        api.close()
