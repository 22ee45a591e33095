"""exportctl's run commands on the catalog directly (``run``, ``runs``): request a run, read run records.

A module of its own, apart from the object commands (:mod:`shared.cli.direct_commands`), because ``exportctl
run`` is on the path from a request to its run, and what a command loads is most of its start-up: it loads
what requesting a run needs, not manifests, YAML, the member store or the dry run. They print what their API
twins in :mod:`shared.cli.api_commands` print, through the same views.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shared.cli.exits import NOT_FOUND, OK, CliError
from shared.cli.variables import parse_assignments

if TYPE_CHECKING:
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct
    from shared.cli.kafka_connection import EarlyProducer


def cmd_run(settings: CliSettings, args: argparse.Namespace) -> int:
    parameters = parse_assignments(args.param, "--param")
    # Kafka first, on a thread (shared.cli.kafka_connection): the producer connects while the catalog's libraries
    # load and the definition is read, which are imported here, after it, rather than with the module.
    from shared.cli.kafka_connection import EarlyProducer

    early = EarlyProducer(settings)
    try:
        return _request_run(settings, args, parameters, early)
    finally:
        early.close()


def _request_run(
    settings: CliSettings, args: argparse.Namespace, parameters: dict[str, str], early: EarlyProducer
) -> int:
    from shared.application import runs as run_use_cases
    from shared.cli.direct import on_catalog, wait_for_run

    def run(context: Direct) -> int:
        # The same use case as the admin API: a reused key returns its run, or is refused (other parameters).
        record = run_use_cases.request_run(
            context.actor,
            args.definition,
            store=context.stores.definitions,
            runs=context.stores.runs,
            publisher=context.publisher(),
            parameters=parameters,
            idempotency_key=args.idempotency_key,
            allow_mass_removal=args.allow_mass_removal,
        )
        print(f"run {record.run_id} requested for '{args.definition}'", flush=True)
        return wait_for_run(context, record.run_id, args.timeout) if args.wait else OK

    return on_catalog(settings, run, early)


def cmd_runs(settings: CliSettings, args: argparse.Namespace) -> int:
    from shared.cli.common import view_of
    from shared.cli.direct import on_catalog
    from shared.cli.run_views import parse_run_id, print_run, print_runs

    run_id = parse_run_id(args.id) if args.id else None

    def runs(context: Direct) -> int:
        store = context.stores.runs
        if run_id is not None:
            record = store.get_run(run_id)
            if record is None:
                raise CliError(f"run {run_id} does not exist", NOT_FOUND)
            view = view_of(record, store.notifications_of(run_id))  # as the API's detail: with its notifications
            print_run(view, [view_of(replay) for replay in store.replays_of(run_id)], args.output)
            return OK
        views = [view_of(record) for record in store.list_runs(args.definition, args.limit)]
        print_runs(views, args.output)
        return OK

    return on_catalog(settings, runs)


def cmd_cancel(settings: CliSettings, args: argparse.Namespace) -> int:
    """Cancel a run through the application layer's cancel (the admin API's ``POST /runs/{run_id}/cancel``)."""
    from shared.application import runs as run_use_cases
    from shared.cli.common import view_of
    from shared.cli.direct import on_catalog
    from shared.cli.run_views import parse_run_id, print_cancelled

    run_id = parse_run_id(args.run_id)

    def cancel(context: Direct) -> int:
        record = run_use_cases.cancel_run(
            context.actor,
            run_id,
            store=context.stores.definitions,
            runs=context.stores.runs,
            publisher=context.publisher(),
        )
        print_cancelled(view_of(record))
        return OK

    return on_catalog(settings, cancel)
