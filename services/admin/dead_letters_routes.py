"""Route of the dead letters: grouped by run, definition and reason, as ``exportctl dead-letters list`` prints them
and the console's dead-letters page of a run shows them (:func:`shared.application.dead_letter_listing`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.admin.dependencies import Context, Reader
from services.admin.problems import RETRY_AFTER_SECONDS, ApiProblem, problem_responses
from shared.application.dead_letter_listing import RetryCells, dead_letter_view

router = APIRouter(tags=["Runs"])


class DeadLetterGroupView(BaseModel):
    """Dead letters of one run and definition with one reason (its first 100 characters), their members counted (a
    record without members counts one), and where those members' retries stand now."""

    run_id: uuid.UUID | None = Field(description="The run; null for records a service could not read (`service`).")
    service: str | None = Field(description="The service that dead-lettered a record it could not read (no run).")
    definition: str | None
    reason: str
    members: int
    retry: str | None = Field(
        description="Where the members stand now, e.g. `3 pending retry, 1 given up, 2 delivered by run <id>` (`no "
        "retry`, `gone from the query`); null when the catalog cannot say (the definition gone, no member key)."
    )


class DeadLetterList(BaseModel):
    """A page of the dead letters in the caller's scope, grouped; how many dead letters and groups there are in all."""

    letters: int = Field(description="The dead letters of all the groups (not of this page only).")
    total_groups: int = Field(description="The groups in all: the pages hold them, `offset` to `offset + limit`.")
    unreadable: int = Field(
        default=0,
        description="Records of the dead-letter topic in the caller's scope that could not be read as dead letters (a "
        "newer schema version, or bytes that are no dead letter): in no group and not in `letters`. Counted for a "
        "run whose id the record still names; with a `definition` filter, none are counted (they say no definition).",
    )
    groups: list[DeadLetterGroupView]


#: The 503 of a read of the dead letters, with the ``Retry-After`` it carries.
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The dead letters were not read: `dead-letters-unreadable`, `dead-letters-busy`, "
        "`catalog-timed-out`, `dead-letters-unavailable` (the problem's `type` says which)",
        "content": problem_responses(503)[503]["content"],
        "headers": {
            "Retry-After": {
                "description": f"Seconds after which to try again ({RETRY_AFTER_SECONDS}), with "
                "`dead-letters-busy` and `dead-letters-unreadable` only",
                "schema": {"type": "integer"},
            }
        },
    }
}


@router.get(
    "/dead-letters",
    summary="The dead letters grouped by run, definition and reason, with member counts and where those members' "
    "retries stand (as `exportctl dead-letters list` prints them)",
    description="Read from the dead-letter topic (from its start), or, when the topic has not changed since (its id "
    "and its partitions' offsets, asked of Kafka at each call, within one of the dead-letter reads), from the "
    "listing this server kept of that read (a few listings, 64 MB in all, for 5 minutes at most): the pages after "
    "the first read no dead letter again while nothing is added or dropped. Within the caller's business units: "
    "a scoped token sees the dead letters of the runs recorded in its units only, records no service could read "
    "(no run) an unscoped token only. Sorted by run, definition and reason, a page of `limit` groups from `offset` "
    "(`total_groups` says how many there are, `letters` how many dead letters they hold); an empty `definition` is "
    "no filter. The read, the retry cells and the scope from the catalog count as one of the dead-letter reads the "
    "server runs at once (a replay's too). Refusals: 422 `invalid-request` (a `run` that is not a run id, a "
    "`definition` over 100 characters, a `limit` or `offset` out of range, naming the field); 503 "
    "`dead-letters-unreadable` (Kafka did not give the dead letters: retry after `Retry-After`), `dead-letters-busy` "
    "(as many dead-letter reads as the server allows at once run now: retry after `Retry-After`), "
    "`catalog-timed-out` (the catalog did not answer in time), `dead-letters-unavailable` (an admin app embedded "
    "without dead letters; the server always reads them).",
    responses={**problem_responses(403, 422), **_UNAVAILABLE},
    operation_id="list_dead_letters",
)
def list_letters(
    context: Context,
    caller: Reader,
    run: Annotated[uuid.UUID | None, Query(description="only this run's dead letters")] = None,
    definition: Annotated[str | None, Query(max_length=100, description="only this definition's (empty: all)")] = None,
    limit: Annotated[int, Query(ge=1, le=1_000, description="the groups of this page, at most")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="the groups before this page")] = 0,
) -> DeadLetterList:
    replays = context.replays
    if replays is None:  # an app embedded without them (the server's composition root always wires them)
        raise ApiProblem(503, "the dead letters are not available on this server", slug="dead-letters-unavailable")
    retries = context.retries
    # DeadLettersUnreadable (503 dead-letters-unreadable) and Busy (503 dead-letters-busy) as problems.install says.
    # The whole listing holds one of the reads, not the Kafka read only: its catalog phase (the retry cells, the
    # runs' scope) holds the request thread too, and thousands of groups would hold it for long.
    # The topic's version is read within the slot too (a frozen broker holds it as a read would, within its bounds),
    # and pages after the first are answered from the listing kept at an unchanged version, the topic not read.
    with replays.held() as letters:
        listing = replays.listings.listing(
            caller,
            letters,
            runs=context.runs,
            cells=RetryCells(caller, context.definitions, retries) if retries is not None else None,
            run=run,
            definition=definition,
            page=slice(offset, offset + limit),
        )
    return DeadLetterList(
        letters=listing.letters,
        total_groups=listing.total_groups,
        unreadable=listing.unreadable,
        groups=[DeadLetterGroupView.model_validate(dead_letter_view(group)) for group in listing.groups],
    )
