"""``exportctl dead-letters list`` and ``replay``: see what partners refused, and send it again.

A replay is a run of its own (trigger ``replay``, ``replay_of`` the original run), so it has its own
counts, emails and history; its batches go through the definition's *current* template and profile,
which is the point: replay once the endpoint or the template is fixed. On the catalog directly both read the
dead-letter topic, hence need Kafka (and the replay the catalog): a broker that cannot be reached is said at once.
Through the admin API (``GET /dead-letters``, ``POST /runs/{run_id}/replay``) the server reads them: the same
groups, the same replay, the same exit codes.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shared.cli.argtypes import idempotency_key, positive_float
from shared.cli.dead_letter_views import print_dead_letters
from shared.cli.exits import OK, UNREACHABLE, CliError
from shared.cli.output import output_option
from shared.cli.run_views import parse_run_id

if TYPE_CHECKING:
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct


def cmd_list(settings: CliSettings, args: argparse.Namespace) -> int:
    """Dead letters grouped by run and reason, with member counts."""
    # Loaded when used: the retry lookup pulls in the member batches' encoding and the catalog, which
    # every other command (and --help) would otherwise load at start.
    from shared.application.dead_letter_listing import dead_letter_view, list_dead_letters
    from shared.application.errors import DeadLettersUnreadable
    from shared.cli.dead_letter_retries import RetryLookup
    from shared.cli.reachability import require_kafka
    from shared.kafka.event_publisher import KafkaDeadLetters

    run = parse_run_id(args.run) if args.run else None
    require_kafka(settings.kafka_bootstrap_servers)
    lookup = RetryLookup(settings.catalog_url)
    try:
        listing = list_dead_letters(
            lookup.actor,  # of every unit: no run's scope to read
            KafkaDeadLetters(settings),
            runs=None,
            cells=lookup.cells,
            run=run,
            definition=args.definition,
        )
    except DeadLettersUnreadable as exc:  # as a replay's (exit 5, the same text)
        raise CliError(str(exc), UNREACHABLE) from None
    finally:
        lookup.close()
    print_dead_letters(
        [dead_letter_view(group) for group in listing.groups], listing.letters, args.output, listing.unreadable
    )
    return OK


def cmd_replay(settings: CliSettings, args: argparse.Namespace) -> int:
    """Start a replay run of a run's dead-lettered members."""
    from shared.application.replay import (  # loaded when used (exportctl's start-up)
        REPLAY_PUBLISH_WAIT_SECONDS,
        replay_dead_letters,
    )
    from shared.cli.direct import on_catalog, wait_for_run
    from shared.cli.reachability import require_kafka
    from shared.kafka.event_publisher import KafkaDeadLetters

    original = parse_run_id(args.run)  # the API mode's words too
    require_kafka(settings.kafka_bootstrap_servers)

    def replay(context: Direct) -> int:
        started = replay_dead_letters(
            context.actor,
            original,
            store=context.stores.definitions,
            runs=context.stores.runs,
            letters=KafkaDeadLetters(settings),
            publisher=context.publisher(REPLAY_PUBLISH_WAIT_SECONDS),  # within the publication's claim
            max_record_bytes=settings.extractor_max_record_bytes,
            idempotency_key=args.idempotency_key,
        )
        print(
            f"run {started.run_id} replays {started.members} member(s) of run {original} in {started.batches} batch(es)"
        )
        return wait_for_run(context, started.run_id, args.timeout) if args.wait else OK

    return on_catalog(settings, replay)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``dead-letters list`` and ``dead-letters replay`` (both modes: the admin API, or Kafka and the
    catalog directly)."""
    parser = commands.add_parser("dead-letters", help="list dead letters, or replay a run's", parents=parents or [])
    parser.set_defaults(api=None, catalog="needs", local=None)
    sub = parser.add_subparsers(dest="dead_letters_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="dead letters by run and reason")
    listing.add_argument("--run", metavar="RUN_ID", help="only this run's")
    listing.add_argument("--definition", metavar="NAME", help="only this definition's (empty: all)")
    output_option(listing, "table")
    listing.set_defaults(func=cmd_list, api="cmd_dead_letters_list", catalog="none")
    replay = sub.add_parser("replay", help="send a run's dead-lettered members again, as a replay run")
    replay.add_argument("run", help="the run id whose dead letters to replay")
    replay.add_argument("--wait", action="store_true", help="follow the replay run and print its summary")
    replay.add_argument(
        "--timeout", type=positive_float, default=600.0, metavar="SECONDS", help="seconds to wait with --wait"
    )
    replay.add_argument(
        "--idempotency-key",
        metavar="KEY",
        type=idempotency_key,
        help="a retried command with the same key and run is the same replay run (published again while its "
        "extraction is not complete); another run: refused",
    )
    replay.set_defaults(func=cmd_replay, api="cmd_dead_letters_replay")
