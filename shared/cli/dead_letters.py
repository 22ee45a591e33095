"""``exportctl dead-letters list`` and ``replay``: see what partners refused, and send it again.

A replay is a run of its own (trigger ``replay``, ``replay_of`` the original run), so it has its own
counts, emails and history; its batches go through the definition's *current* template and profile,
which is the point: replay once the endpoint or the template is fixed.
"""

from __future__ import annotations

import argparse
import getpass
import uuid
from collections import Counter

from shared.catalog import Catalog, NotFound
from shared.cli.common import CliSettings, fail, wait_for_run
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.replay import members_to_replay, replay_batches
from shared.events import DeadLetter, ExtractionCompleted, RunStarted, Trigger
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait, read_whole_topic


def _letters(settings: CliSettings) -> list[DeadLetter]:
    letters = []
    for value in read_whole_topic(settings, settings.topics.dead_letters):
        try:
            letters.append(DeadLetter.model_validate_json(value))
        except ValueError:
            continue  # not ours to list (another schema version, or garbage)
    return letters


def cmd_list(settings: CliSettings, args: argparse.Namespace) -> int:
    """Dead letters grouped by run and reason, with member counts."""
    groups: Counter[tuple[str, str, str]] = Counter()
    letters = 0
    for letter in _letters(settings):
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
    """Publish a replay run of a run's dead-lettered members."""
    original = uuid.UUID(args.run)
    catalog = Catalog.from_url(settings.catalog_url)
    record = catalog.get_run(original)
    if record is None:
        return fail(f"run {original} is not known")
    try:
        definition = catalog.get(ExportDefinition, record.definition)
        template = catalog.get(HttpTemplate, definition.template)
        key_column = catalog.get(SavedQuery, definition.query).key_column
    except NotFound as exc:
        return fail(str(exc))
    members = members_to_replay(_letters(settings), original, key_column)
    if not members:
        return fail(f"run {original} has no dead-lettered members to replay")
    replay_id = uuid.uuid4()
    batches = replay_batches(
        members,
        replay_run_id=replay_id,
        definition=definition.name,
        template=template.name,
        priority=definition.priority,
        batch_size=template.batch_size,
    )
    topics = settings.topics
    started = RunStarted(
        run_id=replay_id,
        definition=definition.name,
        trigger=Trigger.REPLAY,
        requested_by=getpass.getuser(),
        replay_of=original,
    )
    completed = ExtractionCompleted(
        run_id=replay_id, definition=definition.name, members=len(members), batches=len(batches)
    )
    ensure_topics(settings)
    producer = make_producer(settings, "exportctl")
    try:
        key = str(replay_id)
        produce_and_wait(producer, [Outgoing(topics.run_events, key, started.to_bytes())])
        produce_and_wait(
            producer, [Outgoing(topics.member_batches_for(b.priority.value), b.identity, b.to_bytes()) for b in batches]
        )
        produce_and_wait(producer, [Outgoing(topics.run_events, key, completed.to_bytes())])
    finally:
        producer.close()
    print(f"run {replay_id} replays {len(members)} member(s) of run {original} in {len(batches)} batch(es)")
    return wait_for_run(catalog, replay_id, args.timeout) if args.wait else 0


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
