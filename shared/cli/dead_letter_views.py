"""``exportctl dead-letters list`` and ``replay`` through the admin API (``GET /dead-letters``, ``POST
/runs/{run_id}/replay``), and the listing's view both modes print. Light on purpose, as
:mod:`shared.cli.api_commands`: nothing here loads the catalog, SQLAlchemy or Kafka."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from shared.cli.exits import OK
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


def print_dead_letters(views: list[dict[str, Any]], letters: int, fmt: str) -> None:
    """Dead-letter groups (:func:`shared.application.dead_letter_listing.dead_letter_view`, the admin API's) as a
    table with the count of dead letters under it, or as YAML or JSON: both modes print them so."""
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
    print(f"{letters} dead letter(s)")


def api_list(api: AdminApi, args: argparse.Namespace) -> int:
    """``dead-letters list`` through the admin API (``GET /dead-letters``): the same groups, the same output."""
    run = str(parse_run_id(args.run)) if args.run else None
    groups: list[dict[str, Any]] = []
    while True:  # every page: the output is catalog mode's, not the server's first page
        answer = api.call(
            "GET",
            "/dead-letters",
            params={"run": run, "definition": args.definition, "limit": PAGE_GROUPS, "offset": len(groups)},
            timeout=DEAD_LETTERS_CALL_SECONDS,
        )
        groups.extend(answer["groups"])
        # An admin API older than its pages answers every group at once (no total_groups).
        if not answer["groups"] or len(groups) >= answer.get("total_groups", len(groups)):
            break
    print_dead_letters(groups, answer["letters"], args.output)
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
