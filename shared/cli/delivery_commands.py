"""``exportctl deliveries DEFINITION KEY``: a member's last delivery and retry state (both modes: the catalog,
or the admin API)."""

from __future__ import annotations

import argparse
import urllib.parse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.cli.output import dump, lines, output_option

if TYPE_CHECKING:
    from shared.cli.api import AdminApi
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct


def print_delivery(view: dict[str, Any], fmt: str) -> None:
    """A few lines (``-o yaml|json``: the view as it is)."""
    if fmt != "table":
        dump(view, fmt)
        return
    shown = [f"member {view['key']} of {view['definition']}"]
    last = view.get("last")
    if last is None:
        shown.append("  last delivery: none in the log (pruned, or never sent)")
    else:
        outcome = last["outcome"]
        if outcome == "failed":
            outcome += f" ({last['status'] if last['status'] is not None else 'no answer'}: {last['reason']})"
        shown += [
            f"  last delivery: {outcome}",
            f"  run:           {last['run_id']} (batch {last['batch_index']}{', a retry' if last['retry'] else ''})",
            f"  at:            {datetime.fromisoformat(last['at']).isoformat(timespec='seconds')}",
            f"  attempts:      {last['attempts']}",
        ]
    retry = view.get("retry")
    if retry is not None:
        state = retry["state"].replace("_", " ")
        shown.append(
            f"  retry:         {state} after {retry['failed_runs']} failed run(s), last run {retry['last_run_id']}"
        )
    lines(shown)  # the key is the user's, the reason the partner's: shown as data


def cmd_deliveries(settings: CliSettings, args: argparse.Namespace) -> int:
    # Imported here: exportctl through the admin API never loads the catalog (start-up time).
    from shared.application.member_deliveries import delivery_view, member_delivery
    from shared.cli.direct import on_catalog

    def show(context: Direct) -> int:
        answer = member_delivery(
            context.actor,
            args.definition,
            args.key,
            store=context.stores.definitions,
            log=context.stores.deliveries,
            retries=context.stores.retries,
        )
        print_delivery(delivery_view(answer), args.output)
        return 0

    return on_catalog(settings, show)


def cmd_deliveries_api(api: AdminApi, args: argparse.Namespace) -> int:
    quote = urllib.parse.quote
    view = api.call(
        "GET", f"/export-definitions/{quote(args.definition, safe='')}/members/{quote(args.key, safe='')}/deliveries"
    )
    print_delivery(view, args.output)
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``deliveries`` (both modes)."""
    deliveries = commands.add_parser(
        "deliveries",
        help="a member's last delivery (delivered, or failed with status and reason) and retry state",
        parents=parents or [],
    )
    deliveries.add_argument("definition", help="the export definition")
    deliveries.add_argument("key", help="the member's key (the saved query's key column)")
    output_option(deliveries, "table")
    deliveries.set_defaults(func=cmd_deliveries, api="cmd_deliveries", catalog="needs", local=None)
