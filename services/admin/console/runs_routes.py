"""Runs: the history (all, or a definition's), a run's page that follows it live, its dead letters by reason with a
replay, and cancelling it; each action after a confirmation. An action Kafka did not acknowledge re-shows its
confirmation (503) with what was recorded and a button that retries it safely: a cancel is cancelled again, a replay
sent again under its Idempotency-Key is the replay run it recorded."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from services.admin.console.context import console_of
from services.admin.console.forms import form_of
from services.admin.console.gate import PREFIX
from services.admin.console.pages import me_of
from services.admin.problems import (
    RETRY_AFTER_SECONDS,
    dead_letters_unreadable_detail,
    log_catalog_timed_out,
    publish_failed_detail,
)
from shared.application import objects as object_use_cases
from shared.application import runs as use_cases
from shared.application.errors import Busy, CancelNotPublished, DeadLettersUnreadable, Refused, RunNotPublished
from shared.application.replay import replay_dead_letters
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord, RunStatus
from shared.errors import CatalogTimedOut

router = APIRouter(prefix=f"{PREFIX}/runs")
PAGE_SIZE = 25


def _progress(record: RunRecord) -> dict[str, Any]:
    """Delivered and failed out of read, as the live progress shows them."""
    done = record.delivered + record.failed
    return {"done": done, "of": max(record.extracted, done), "final": record.status.is_final}


@router.get("")
def runs(
    request: Request,
    definition: Annotated[str, Query(max_length=100)] = "",
    status: Annotated[RunStatus | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    console, me = console_of(request), me_of(request)
    definition_id = None
    if definition:
        # By id: a renamed definition keeps its history, a re-created name starts a new one.
        definition_id, _ = object_use_cases.visible_with_id(
            me.actor, console.admin.definitions, ExportDefinition, definition
        )
    records = console.admin.runs.list_runs(
        limit=PAGE_SIZE + 1,
        offset=(page - 1) * PAGE_SIZE,
        definition_id=definition_id,
        statuses=[status] if status else None,
        business_units=use_cases.units_in_scope(me.actor),
    )
    shown = records[:PAGE_SIZE]
    return console.pages.render(
        request,
        "runs.html",
        runs=[(record, _progress(record)) for record in shown],
        live=any(not record.status.is_final for record in shown),
        definition=definition,
        status_filter=status.value if status else "",
        statuses=[s.value for s in RunStatus],
        page=page,
        more=len(records) > PAGE_SIZE,
    )


def _run(request: Request, run_id: uuid.UUID) -> RunRecord:
    return use_cases.visible_run(me_of(request).actor, run_id, runs=console_of(request).admin.runs)


@router.get("/{run_id}")
def run_page(request: Request, run_id: uuid.UUID) -> Response:
    console, record = console_of(request), _run(request, run_id)
    return console.pages.render(
        request,
        "run.html",
        run=record,
        progress=_progress(record),
        replays=console.admin.runs.replays_of(run_id),
        notifications=console.admin.runs.notifications_of(run_id),
    )


@router.get("/{run_id}/dead-letters")
def dead_letters(request: Request, run_id: uuid.UUID) -> Response:
    """The run's dead letters grouped by reason, with their member counts (read from the dead-letter topic, as the admin
    API's ``GET /dead-letters`` and exportctl list them, or from the listing this process kept of it while it does not
    change: the API's :class:`~services.admin.dead_letter_listings.DeadLetterListings`). Unread (Kafka did not give
    them, or as many reads as the process allows run now): 503 with ``Retry-After``, the page saying why (a monitor or a
    script does not read it as the run's dead letters), which the run's page shows in its place all the same
    (``data-swap-unavailable``)."""
    console, me = console_of(request), me_of(request)
    try:
        record = _run(request, run_id)
        # The listing the API keeps (the same process's): a view of the page again reads the topic's version only
        # while nothing is added or dropped; the slot held over the scope's catalog read too, as the API's.
        with console.replays.held() as letters:
            listing = console.replays.listings.listing(
                me.actor, letters, runs=console.admin.runs, cells=None, run=run_id, reason_chars=None
            )
    except DeadLettersUnreadable as exc:
        return _unread(request, run_id, dead_letters_unreadable_detail(request, exc))
    except Busy as exc:  # as many reads as the process allows run now
        return _unread(request, run_id, exc.reason)
    except CatalogTimedOut as exc:  # said in the card, not the console's whole error page nested in it
        log_catalog_timed_out(request, exc)
        return _unread(request, run_id, str(exc), retry_after=False)
    reasons: Counter[str] = Counter()
    for group in listing.groups:
        reasons[group.reason] += group.members
    page = console.pages.render(
        request,
        "dead_letters.html",
        run=record,
        reasons=reasons.most_common(),
        unreadable=listing.unreadable,
        error=None,
    )
    page.headers[PART_HEADER] = DEAD_LETTERS_PART
    return page


#: The header naming the part of a page an answer is (``console.js`` swaps a 503 into the part it names only: never
#: another answer, such as the console's whole error page).
PART_HEADER = "X-Console-Part"
#: The dead-letters part of a run's page (the ``id`` of its element).
DEAD_LETTERS_PART = "dead-letters"


def _unread(request: Request, run_id: uuid.UUID, error: str, *, retry_after: bool = True) -> Response:
    """The dead-letters part of a run's page whose dead letters were not read: 503, ``Retry-After`` as the API's
    (not for a catalog that timed out: nothing says when it answers again)."""
    page = console_of(request).pages.render(
        request, "dead_letters.html", status=503, run={"run_id": run_id}, reasons=[], unreadable=0, error=error
    )
    page.headers[PART_HEADER] = DEAD_LETTERS_PART
    if retry_after:
        page.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return page


def _confirm(request: Request, **values: Any) -> Response:
    values.setdefault("error", None)
    values.setdefault("hidden", {})
    values.setdefault("facts", [])
    status = values.pop("status", 422 if values["error"] else 200)
    return console_of(request).pages.render(request, "confirm.html", status=status, **values)


#: A fact's value: its text, or its text and the address it links to.
Fact = tuple[str, str | tuple[str, str]]


def _run_facts(record: RunRecord) -> list[Fact]:
    return [
        ("Run", str(record.run_id)),
        ("Export", record.definition),
        ("Status", record.status.value.replace("_", " ")),
        ("Counts", f"{record.delivered} delivered, {record.failed} failed of {record.extracted} read"),
    ]


@router.get("/{run_id}/cancel")
def cancel_confirmation(request: Request, run_id: uuid.UUID) -> Response:
    return _cancel_page(request, _run(request, run_id))


def _cancel_page(
    request: Request, record: RunRecord, error: str | None = None, *, unpublished: CancelNotPublished | None = None
) -> Response:
    """The cancel's confirmation; after ``unpublished`` (the run recorded cancelled, its event not acknowledged by
    Kafka), a 503 with its detail, the run as recorded and the button that cancels it again: publishing the
    cancellation again (a cancelled run's cancel does nothing else)."""
    return _confirm(
        request,
        title="Cancel this run",
        message="Extraction stops at its next page and the batches not yet delivered are not sent. "
        "What was delivered stays delivered.",
        facts=_run_facts(record),
        action=f"{PREFIX}/runs/{record.run_id}/cancel",
        button="Cancel the run" if unpublished is None else "Cancel the run again",
        style="danger",
        back=f"{PREFIX}/runs/{record.run_id}",
        error=publish_failed_detail(request, unpublished) if unpublished is not None else error,
        **({"status": 503} if unpublished is not None else {}),
    )


@router.post("/{run_id}/cancel")
def cancel(request: Request, run_id: uuid.UUID) -> Response:
    console, me = console_of(request), me_of(request)
    try:
        use_cases.cancel_run(
            me.actor,
            run_id,
            store=console.admin.definitions,
            runs=console.admin.runs,
            publisher=console.admin.publisher,
        )
    except Refused as refusal:
        return _cancel_page(request, _run(request, run_id), refusal.reason)
    except CancelNotPublished as unpublished:
        return _cancel_page(request, _run(request, run_id), unpublished=unpublished)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}", status_code=303)


@router.get("/{run_id}/replay")
def replay_confirmation(request: Request, run_id: uuid.UUID) -> Response:
    return _replay_page(request, _run(request, run_id))


def _replay_page(
    request: Request,
    record: RunRecord,
    error: str | None = None,
    *,
    unpublished: RunNotPublished | None = None,
    status: int | None = None,
    new_key: bool = False,
) -> Response:
    """The replay's confirmation, with an Idempotency-Key of its own (a resubmitted form, a double click, finds the
    replay run the first one recorded); posted again after a refusal or ``unpublished`` (the replay run recorded
    queued, its events not all acknowledged by Kafka: a 503 with its detail and a link to it), the same key, so
    submitting it again is the retry that publishes the replay run's events again, not a second replay. ``status``:
    the answer's, when not the refusal's 422 (the dead letters unread: 503). ``new_key``: the form gets a new key (the
    old one's replay cannot be retried: its dead letters changed, it ended unfinished, the key is another's)."""
    key = None if new_key else form_of(request).optional("idempotency_key")
    facts = _run_facts(record)
    if unpublished is not None:
        status, replay_id = 503, str(unpublished.run_id)
        facts.append(("Replay run (recorded queued)", (replay_id, f"{PREFIX}/runs/{replay_id}")))
    return _confirm(
        request,
        title="Replay the dead letters",
        message="This starts a replay run: the members the partner refused in this run are sent again, through the "
        "definition's current HTTP operation and connection profile.",
        facts=facts,
        action=f"{PREFIX}/runs/{record.run_id}/replay",
        button="Replay",
        style="primary",
        back=f"{PREFIX}/runs/{record.run_id}",
        hidden={"idempotency_key": key or f"console-{uuid.uuid4()}"},
        error=publish_failed_detail(request, unpublished) if unpublished is not None else error,
        **({"status": status} if status else {}),
    )


#: Refusals of a replay whose Idempotency-Key cannot be used again (:func:`replay_dead_letters`).
_KEY_SPENT = frozenset({"dead-letters-changed", "replay-ended", "idempotency-key-reused"})


@router.post("/{run_id}/replay")
def replay(request: Request, run_id: uuid.UUID) -> Response:
    console, me = console_of(request), me_of(request)
    try:
        started = replay_dead_letters(
            me.actor,
            run_id,
            store=console.admin.definitions,
            runs=console.admin.runs,
            letters=console.replays.letters(),
            publisher=console.admin.publisher,
            max_record_bytes=console.replays.max_record_bytes,
            idempotency_key=form_of(request).optional("idempotency_key"),
            slot=console.replays.slot,  # one of the reads past the key's checks, as the API's replay
        )
    except Refused as refusal:
        if refusal.slug in _KEY_SPENT:  # submitting the same key again would be refused again: a new one
            return _replay_page(request, _run(request, run_id), refusal.reason, status=refusal.status, new_key=True)
        # Busy: another request publishes this key's replay run now: 503, the same key to retry.
        busy = refusal.status if isinstance(refusal, Busy) else None
        return _replay_page(request, _run(request, run_id), refusal.reason, status=busy)
    except RunNotPublished as unpublished:
        return _replay_page(request, _run(request, run_id), unpublished=unpublished)
    except DeadLettersUnreadable as exc:  # the dead letters unread: no replay run recorded, try again (the same key)
        return _replay_page(request, _run(request, run_id), dead_letters_unreadable_detail(request, exc), status=503)
    return RedirectResponse(f"{PREFIX}/runs/{started.run_id}", status_code=303)
