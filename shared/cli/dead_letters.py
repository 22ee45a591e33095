"""``exportctl dead-letters list`` and ``replay``: see what partners refused, and send it again.

A replay is a run of its own (trigger ``replay``, ``replay_of`` the original run), so it has its own
counts, emails and history; its batches go through the definition's *current* template and profile,
which is the point: replay once the endpoint or the template is fixed. Both read the dead-letter topic,
hence need Kafka (and the replay the catalog): a broker that cannot be reached is said at once.
"""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from shared.cli.argtypes import idempotency_key, positive_float
from shared.cli.exits import OK, UNREACHABLE, USAGE, CliError
from shared.cli.output import dump, output_option, table

if TYPE_CHECKING:
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct


def cmd_list(settings: CliSettings, args: argparse.Namespace) -> int:
    """Dead letters grouped by run and reason, with member counts."""
    # Loaded when used: the retry lookup pulls in the member batches' encoding and the catalog, which
    # every other command (and --help) would otherwise load at start.
    from shared.application.errors import DeadLettersUnreadable
    from shared.cli.dead_letter_retries import RetryLookup, member_keys
    from shared.cli.reachability import require_kafka
    from shared.kafka.event_publisher import KafkaDeadLetters

    require_kafka(settings.kafka_bootstrap_servers)
    groups: Counter[tuple[str, str, str]] = Counter()
    # Only each group's member keys are kept (not the letters' member values): where they stand now, retried by
    # the next run, given up, delivered since, the catalog says.
    keys: dict[tuple[str, str, str], tuple[str, list[str]]] = {}
    letters = 0
    lookup = RetryLookup(settings.catalog_url)
    try:
        try:
            read = KafkaDeadLetters(settings).dead_letters()
        except DeadLettersUnreadable as exc:  # as a replay's (exit 5, the same text)
            raise CliError(str(exc), UNREACHABLE) from None
        for letter in read:
            if args.run and str(letter.run_id) != args.run:
                continue
            if args.definition and letter.definition != args.definition:
                continue
            letters += 1
            run = str(letter.run_id) if letter.run_id else f"({letter.service}: unreadable record)"
            group = (run, letter.definition or "-", letter.reason[:100])
            groups[group] += len(letter.members or []) or 1
            column = lookup.key_column(letter.definition or "")
            if column is not None:
                keys.setdefault(group, (letter.definition or "", []))[1].extend(
                    member_keys(letter.members or [], column)
                )
        retries = lookup.cells(keys)
    finally:
        lookup.close()
    rows = [
        (run, definition, count, reason, retries.get((run, definition, reason), ""))
        for (run, definition, reason), count in sorted(groups.items())
    ]
    if args.output != "table":
        dump(
            [
                {"run": r, "definition": d, "members": m, "reason": why, "retry": state or None}
                for r, d, m, why, state in rows
            ],
            args.output,
        )
        return OK
    table(("RUN", "DEFINITION", "MEMBERS", "REASON", "RETRY"), rows)
    print(f"{letters} dead letter(s)")
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

    try:
        original = uuid.UUID(args.run)
    except ValueError:
        raise CliError(f"'{args.run}' is not a run id", USAGE) from None
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
    """Register ``dead-letters list`` and ``dead-letters replay`` (on Kafka and the catalog directly)."""
    parser = commands.add_parser(
        "dead-letters", help="(catalog, Kafka) list dead letters, or replay a run's", parents=parents or []
    )
    parser.set_defaults(api=None, catalog="needs", local=None)
    sub = parser.add_subparsers(dest="dead_letters_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="dead letters by run and reason")
    listing.add_argument("--run", metavar="RUN_ID", help="only this run's")
    listing.add_argument("--definition", metavar="NAME", help="only this definition's")
    output_option(listing, "table")
    listing.set_defaults(func=cmd_list, catalog="none")
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
    replay.set_defaults(func=cmd_replay)
