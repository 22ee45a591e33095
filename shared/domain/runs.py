"""Run accounting: fold a run's events into its record. Pure; the notifier persists the result.

The fold is built from facts (what was extracted, which batches have an outcome, whether the run
failed), not from transitions, so the same set of events gives the same record whatever their order.
Duplicates are the caller's to drop: ``duplicate=True`` for a batch outcome already counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from shared.domain.email_retries import EarlierSends
from shared.events import (
    COUNT_MAX,
    AnyRunEvent,
    BatchOutcome,
    ExtractionCompleted,
    RunCancelled,
    RunFailed,
    RunSkipped,
    RunStarted,
)

MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class StartClaims:
    """Notifications claimed in the transaction of the fold that starts a run (an outbox: committed with the run's
    ``started_at``, so none is lost to a crash after it): per definition name, the ledger's (kind, recipients) to
    claim, each left to its first sender (not due for a retry) until ``held_until``."""

    kinds: Mapping[str, Sequence[tuple[str, list[str]]]]
    held_until: datetime
    #: When given, gets what each claim the fold inserted knows of its notification once the fold commits: no
    #: recipient refused, no failed attempt (:data:`~shared.domain.email_retries.EarlierSends`), by (run id, kind), so
    #: that its first attempt's failure reads nothing more. A claim whose row was there before is not in it.
    earlier: dict[tuple[uuid.UUID, str], EarlierSends] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Claimant:
    """Who names itself in a claim: ``name`` (a notifier replica's id) and ``started_at``, its process's start on the
    catalog's clock (:func:`shared.catalog.lease_claims.read_catalog_now`). It takes back at once only its name's claims
    made (or last renewed) before ``started_at``: those of its process before a restart in place; never one made since
    (a live process sharing the name, or its own after an outage), which waits for its lease as anyone else's does."""

    name: str
    started_at: datetime


class RunStatus(StrEnum):
    QUEUED = "queued"
    EXTRACTING = "extracting"
    DISPATCHING = "dispatching"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MISSED = "missed"

    @property
    def is_final(self) -> bool:
        return self not in {RunStatus.QUEUED, RunStatus.EXTRACTING, RunStatus.DISPATCHING}


@dataclass(frozen=True)
class RunRecord:
    """What is known of one run."""

    run_id: uuid.UUID
    definition: str
    trigger: str | None = None
    requested_by: str | None = None
    #: When the run was asked for: the request's time (a CloudEvent's ``time``, a scheduler's fire, the API call).
    requested_at: datetime | None = None
    scheduled_for: datetime | None = None
    replay_of: uuid.UUID | None = None
    started_at: datetime | None = None
    extraction_complete: bool = False
    extracted: int = 0
    batches_expected: int | None = None
    batches_done: int = 0
    delivered: int = 0
    failed: int = 0
    failure_reason: str | None = None
    terminal_status: RunStatus | None = None
    error_samples: tuple[str, ...] = field(default_factory=tuple)
    last_event_at: datetime | None = None
    finished_at: datetime | None = None
    #: The definition's id and business unit when the run was recorded: runs are scoped by these, so a
    #: renamed or deleted definition keeps its history's scope and a re-created name inherits nothing.
    definition_id: uuid.UUID | None = None
    business_unit: str | None = None
    #: A change-mode run's members by kind (None for full and incremental runs): ``unchanged`` ones were
    #: compared with the last delivered snapshot and not sent.
    added: int | None = None
    changed: int | None = None
    unchanged: int | None = None
    removed: int | None = None
    #: How many of ``extracted`` were re-sent because an earlier run's delivery of them failed.
    retried: int = 0
    #: The run's request allowed it to remove more of the partner's members than ``sync.max_removed`` (an
    #: operator's ``exportctl run --allow-mass-removal``; its ``requested_by`` says who).
    mass_removal_allowed: bool = False

    @property
    def status(self) -> RunStatus:
        if self.failure_reason is not None:
            return RunStatus.FAILED
        if self.terminal_status is not None:
            return self.terminal_status
        if not self.extraction_complete:
            return RunStatus.EXTRACTING if self.started_at else RunStatus.QUEUED
        if self.batches_expected is not None and self.batches_done < self.batches_expected:
            return RunStatus.DISPATCHING
        if self.failed == 0:
            return RunStatus.SUCCEEDED
        if self.delivered == 0:
            return RunStatus.FAILED
        return RunStatus.COMPLETED_WITH_ERRORS

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def _total(count: int, more: int) -> int:
    """``count`` plus ``more``, stopping at :data:`~shared.events.COUNT_MAX`: a run's totals fit the catalog's INTEGER
    columns on SQLite as on PostgreSQL (each event's count is bounded; only a sum of forged ones could go over)."""
    return min(count + more, COUNT_MAX)


def _with_sample(samples: tuple[str, ...], error: str | None) -> tuple[str, ...]:
    if error is None or len(samples) >= MAX_ERROR_SAMPLES or error in samples:
        return samples
    return (*samples, error)


def fold(
    record: RunRecord,
    event: AnyRunEvent,
    *,
    duplicate: bool = False,
) -> RunRecord:
    """Apply one event to a run's record; a final run keeps its status and finish time."""
    was_final = record.status.is_final
    last = max(filter(None, [record.last_event_at, event.at]))
    if isinstance(event, RunStarted):
        updated = replace(
            record,
            trigger=record.trigger or event.trigger.value,
            requested_by=record.requested_by or event.requested_by,
            requested_at=record.requested_at or event.requested_at,
            scheduled_for=record.scheduled_for or event.scheduled_for,
            replay_of=record.replay_of or event.replay_of,
            mass_removal_allowed=record.mass_removal_allowed or event.allow_mass_removal,
            started_at=min(filter(None, [record.started_at, event.at])),
        )
    elif isinstance(event, ExtractionCompleted):
        changes = event.changes
        updated = replace(
            record,
            extraction_complete=True,
            extracted=event.members,
            batches_expected=event.batches,
            retried=event.retries,
            added=changes.added if changes else None,
            changed=changes.changed if changes else None,
            unchanged=changes.unchanged if changes else None,
            removed=changes.removed if changes else None,
        )
    elif isinstance(event, BatchOutcome):
        if duplicate:
            return record
        updated = replace(
            record,
            batches_done=_total(record.batches_done, 1),
            delivered=_total(record.delivered, event.delivered),
            failed=_total(record.failed, event.failed),
            error_samples=_with_sample(record.error_samples, event.error),
        )
    elif isinstance(event, RunFailed):
        updated = replace(
            record,
            failure_reason=record.failure_reason or event.reason,
            error_samples=_with_sample(record.error_samples, event.reason),
        )
    elif isinstance(event, RunCancelled):
        if was_final:
            return record  # too late: a finished run keeps its outcome
        updated = replace(
            record,
            terminal_status=record.terminal_status or RunStatus.CANCELLED,
            error_samples=_with_sample(record.error_samples, f"cancelled by {event.requested_by or 'an operator'}"),
        )
    else:
        # Skipped and missed runs never start: the scheduler says so, with the reason.
        status = RunStatus.SKIPPED if isinstance(event, RunSkipped) else RunStatus.MISSED
        updated = replace(
            record,
            trigger=record.trigger or "schedule",
            scheduled_for=record.scheduled_for or event.scheduled_for,
            terminal_status=record.terminal_status or status,
            error_samples=_with_sample(record.error_samples, event.reason),
        )
    updated = replace(updated, last_event_at=last)
    if not was_final and updated.status.is_final:
        updated = replace(updated, finished_at=last)
    return updated


def failure_threshold_reason(record: RunRecord, max_failure_percent: float | None) -> str | None:
    """Why a run that completed with errors counts as failed under the threshold, or None if it does not."""
    if max_failure_percent is None or record.status is not RunStatus.COMPLETED_WITH_ERRORS:
        return None
    total = record.delivered + record.failed
    rate = 100.0 * record.failed / total if total else 0.0
    if rate <= max_failure_percent:
        return None
    return f"{record.failed} of {total} members failed ({rate:.1f}%), over the {max_failure_percent:g}% threshold"


def consecutive_failures(statuses_newest_first: list[RunStatus]) -> int:
    """How many of the latest finished runs failed in a row (skipped and missed runs neither count nor break it)."""
    count = 0
    for status in statuses_newest_first:
        if status in {RunStatus.SKIPPED, RunStatus.MISSED}:
            continue
        if status is not RunStatus.FAILED:
            break
        count += 1
    return count


def stuck_reason(record: RunRecord, now: datetime, stuck_after_seconds: float) -> str | None:
    """Why an unfinished run counts as stuck (no event for too long), or None."""
    if record.status.is_final or record.last_event_at is None:
        return None
    silent = (now - record.last_event_at).total_seconds()
    if silent < stuck_after_seconds:
        return None
    return (
        f"stuck: no progress for {silent:.0f} s while {record.status.value} "
        f"(read {record.extracted}, delivered {record.delivered}, failed {record.failed})"
    )


@dataclass(frozen=True)
class RunNotification:
    """One of a run's notifications as its ledger holds it (``notifications``): an email (``kind`` ``success``,
    ``error`` or ``recovered``, its addresses) or a webhook (``webhook:<channel>:<event>``, the channel), and where it
    stands: ``sent`` (``last_error`` then names the recipients an email did not reach: refused while the others took
    it), ``given_up`` (``last_error`` says why: a final answer, its attempts spent, its definition gone) or
    ``pending`` (to be tried, at ``next_attempt_at`` once it failed). ``attempts``: its failed attempts that count
    toward giving it up (an email's failures every email would meet, the SMTP server down or refusing the sender, do
    not)."""

    kind: str
    recipients: tuple[str, ...]
    status: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    gave_up_at: datetime | None
    next_attempt_at: datetime | None

    @property
    def channel(self) -> str | None:
        """A webhook's channel (None for an email)."""
        prefix, _, rest = self.kind.partition(":")
        return rest.rpartition(":")[0] or None if prefix == "webhook" else None


def notification_status(sent_at: datetime | None, gave_up_at: datetime | None) -> str:
    """``sent``, ``given_up`` or ``pending`` (:class:`RunNotification`)."""
    if sent_at is not None:
        return "sent"
    return "given_up" if gave_up_at is not None else "pending"
