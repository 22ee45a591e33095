"""``exportctl dead-letters list`` and ``replay`` through the admin API (``GET /dead-letters``, ``POST
/runs/{run_id}/replay``), and the listing's view both modes print. Light on purpose, as
:mod:`shared.cli.api_commands`: nothing here loads the catalog, SQLAlchemy or Kafka."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, Any

from shared.cli.exits import OK, UNREACHABLE, CliError
from shared.cli.output import dump, table
from shared.cli.progress import follow
from shared.cli.run_views import parse_run_id

if TYPE_CHECKING:
    from shared.cli.api import AdminApi

#: How long exportctl waits for the admin API's answer to a listing or a replay: the server reads the dead letters
#: within 60 s, then a replay's publication takes 15 s at most, or waits 30 s for another request's (the default
#: 30 s of a call would give up on a replay the server still records).
DEAD_LETTERS_CALL_SECONDS = 120.0
#: The groups a page of ``GET /dead-letters`` asks for: the most the route answers at once.
PAGE_GROUPS = 1_000


def print_dead_letters(views: list[dict[str, Any]], letters: int, fmt: str, unreadable: int = 0) -> None:
    """Dead-letter groups (:func:`shared.application.dead_letter_listing.dead_letter_view`, the admin API's) as a
    table with the count of dead letters under it, or as YAML or JSON: both modes print them so. Records that could
    not be read as dead letters (``unreadable``) are said under the table, or on stderr beside YAML or JSON (their
    list of groups stays what it was)."""
    if unreadable:
        said = unreadable_text(unreadable)
        if fmt != "table":
            print(f"exportctl: warning: {said}", file=sys.stderr)
    rows = [
        (
            view["run_id"] or f"({view['service']}: unreadable record)",
            view["definition"] or "-",
            view["members"],
            view["reason"],
            view["retry"] or "",
        )
        for view in views
    ]
    if fmt != "table":
        dump(
            [
                {"run": r, "definition": d, "members": m, "reason": why, "retry": state or None}
                for r, d, m, why, state in rows
            ],
            fmt,
        )
        return
    table(("RUN", "DEFINITION", "MEMBERS", "REASON", "RETRY"), rows)
    print(f"{letters} dead letter(s)" + (f"; {said}" if unreadable else ""))


def unreadable_text(unreadable: int) -> str:
    """What a listing says of the records it could not read as dead letters."""
    return f"{unreadable} more could not be read (written by a newer version?), not listed"


def api_list(api: AdminApi, args: argparse.Namespace) -> int:
    """``dead-letters list`` through the admin API (``GET /dead-letters``): the same groups, the same output, read
    page by page. Each group once (by run, service, definition and reason) even if the dead letters change between
    pages, with a warning on stderr then; the count of dead letters is the last page's."""
    run = str(parse_run_id(args.run)) if args.run else None
    groups: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    offset = 0
    first: tuple[Any, Any] | None = None
    changed = False
    max_pages: int | None = None
    pages = 0
    while True:  # every page: the output is catalog mode's, not the server's first page
        if max_pages is not None and pages >= max_pages:
            # A server whose total keeps running ahead of its groups: no endless loop.
            raise CliError(
                f"the admin API kept answering full pages of dead letters past its first page's total_groups "
                f"({first[0] if first else '?'}): stopped after {pages} page(s); the listing is not complete",
                UNREACHABLE,
            )
        answer = api.call(
            "GET",
            "/dead-letters",
            params={"run": run, "definition": args.definition, "limit": PAGE_GROUPS, "offset": offset},
            timeout=DEAD_LETTERS_CALL_SECONDS,
        )
        pages += 1
        page = answer["groups"]
        offset += len(page)
        state = (answer.get("total_groups"), answer["letters"])
        if first is None:
            first = state
            if state[0] is not None:
                max_pages = math.ceil(state[0] / PAGE_GROUPS) + 1
        elif state != first:
            changed = True
        for group in page:
            key = (group["run_id"], group["service"], group["definition"], group["reason"])
            if key not in seen:  # a group a new one pushed onto the next page comes again
                seen.add(key)
                groups.append(group)
        # A short page is the last; an admin API older than its pages answers every group at once (no total_groups).
        if len(page) < PAGE_GROUPS or offset >= answer.get("total_groups", offset):
            break
    if changed:
        print(
            "exportctl: warning: the dead letters changed while they were read (the list may miss a group that came "
            "or still show one that went; the count is the last page's): list again for a settled view",
            file=sys.stderr,
        )
    print_dead_letters(groups, answer["letters"], args.output, answer.get("unreadable", 0))
    return OK


def api_replay(api: AdminApi, args: argparse.Namespace) -> int:
    """``dead-letters replay`` through the admin API (``POST /runs/{run_id}/replay``): the key as its
    Idempotency-Key, ``--wait`` following the replay run through the API as ``run --wait`` does."""
    original = parse_run_id(args.run)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    started = api.call("POST", f"/runs/{original}/replay", headers=headers, timeout=DEAD_LETTERS_CALL_SECONDS)
    run_id = started["run_id"]
    if started.get("members") is not None:
        print(
            f"run {run_id} replays {started['members']} member(s) of run {original} in {started['batches']} batch(es)",
            flush=True,
        )
    else:  # an admin API older than the counts in its answer
        print(f"run {run_id} replays the dead-lettered members of run {original}", flush=True)
    if not args.wait:
        return OK
    return follow(lambda: api.call("GET", f"/runs/{run_id}"), run_id, args.timeout, poll_seconds=0.5)
