"""``exportctl dead-letters list`` and ``replay``: see what partners refused, and send it again.

A replay is a run of its own (trigger ``replay``, ``replay_of`` the original run), so it has its own
counts, emails and history; its batches go through the definition's *current* template and profile,
which is the point: replay once the endpoint or the template is fixed.
"""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from shared.cli.common import CliSettings, fail, wait_for_run

if TYPE_CHECKING:
    from shared.cli.direct import Direct


def cmd_list(settings: CliSettings, args: argparse.Namespace) -> int:
    """Dead letters grouped by run and reason, with member counts."""
    from shared.kafka.event_publisher import KafkaDeadLetters  # loaded when used (exportctl's start-up)

    groups: Counter[tuple[str, str, str]] = Counter()
    letters = 0
    for letter in KafkaDeadLetters(settings).dead_letters():
        if args.run and str(letter.run_id) != args.run:
            continue
        if args.definition and letter.definition != args.definition:
            continue
        letters += 1
        run = str(letter.run_id) if letter.run_id else f"({letter.service}: unreadable record)"
        groups[(run, letter.definition or "-", letter.reason[:100])] += len(letter.members or []) or 1
    for (run, definition, reason), members in sorted(groups.items()):
        print(f"{run}  {definition:<30} {members:>7} member(s)  {reason}")
    print(f"{letters} dead letter(s)")
    return 0


def cmd_replay(settings: CliSettings, args: argparse.Namespace) -> int:
    """Start a replay run of a run's dead-lettered members."""
    from shared.application.replay import replay_dead_letters  # loaded when used (exportctl's start-up)
    from shared.cli.direct import on_catalog
    from shared.kafka.event_publisher import KafkaDeadLetters

    try:
        original = uuid.UUID(args.run)
    except ValueError:
        return fail(f"'{args.run}' is not a run id")

    def replay(context: Direct) -> int:
        started = replay_dead_letters(
            context.actor,
            original,
            store=context.stores.definitions,
            runs=context.stores.runs,
            letters=KafkaDeadLetters(settings),
            publisher=context.publisher(),
            max_record_bytes=settings.extractor_max_record_bytes,
        )
        print(
            f"run {started.run_id} replays {started.members} member(s) of run {original} in {started.batches} batch(es)"
        )
        return wait_for_run(context.stores.runs, started.run_id, args.timeout) if args.wait else 0

    return on_catalog(settings, replay)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dead-letters list`` and ``dead-letters replay``."""
    parser = commands.add_parser("dead-letters", help="list dead letters, or replay a run's")
    sub = parser.add_subparsers(dest="dead_letters_command", required=True)
    listing = sub.add_parser("list", help="dead letters by run and reason")
    listing.add_argument("--run", help="only this run id")
    listing.add_argument("--definition", help="only this definition")
    listing.set_defaults(func=cmd_list)
    replay = sub.add_parser("replay", help="send a run's dead-lettered members again, as a replay run")
    replay.add_argument("run", help="the run id whose dead letters to replay")
    replay.add_argument("--wait", action="store_true", help="follow the replay run and print its summary")
    replay.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    replay.set_defaults(func=cmd_replay)
