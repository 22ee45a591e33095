"""Where an extraction stands, and when an incremental definition's watermark moves. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.domain.removal_limit import RemovalLimit
from shared.domain.runs import RunStatus
from shared.domain.sync_mode import SyncMode


@dataclass(frozen=True)
class RunSync:
    """How a run syncs, fixed at its first start: a resumed run keeps it though its definition changed since."""

    mode: SyncMode
    #: Retries of refused members look for them in the whole query (False: the incremental run's window).
    full_scope: bool
    #: A change run's counts as of its checkpoint (added, changed, unchanged, removed): a resume goes on from
    #: them rather than counting the pages before the checkpoint again.
    counts: dict[str, int] | None = None
    #: Whether the run's ``run.started`` was acknowledged before this sync was recorded (a run started in bulk,
    #: ahead of its extraction): its extraction, and any later handling of its request, publish none.
    announced: bool = False
    #: An incremental run's watermark column as its definition named it at the run's start (None: a full run, or an
    #: incremental run recorded before this was, which takes its definition's column as it is now).
    watermark_column: str | None = None
    #: Members per record as at the run's first start (None: recorded before this was; the template's now). A run
    #: resumed after its template's ``batch_size`` was edited re-reads its last page with the same records: the same
    #: identities (``run:batch_index``, the Idempotency-Key's stem) hold the same members.
    record_size: int | None = None
    #: A change run's members per record of each kind it sends (``added``, ``changed``, ``removed``: its templates'
    #: ``batch_size``), as at its first start (None: not recorded yet; recorded before its first batch is sent).
    kind_record_sizes: dict[str, int] | None = None
    #: A change run's template of each kind it sends, as at its first start (None: not recorded yet, or recorded
    #: before this was): a kind's template named, renamed or set to ``false`` before a resume changes nothing.
    kind_templates: dict[str, str] | None = None
    #: A change run's bound on its removals (``sync.max_removed``), as at its first start (None: not recorded yet, or
    #: recorded before this was): a bound edited before a resume judges the next run, not this one.
    removal_limit: RemovalLimit | None = None
    #: A change run's guard before sending (:mod:`services.extractor.removal_guard`) passed: recorded before its
    #: first page is published, so a resume that finds no checkpoint of its pages (it may have sent some) is not
    #: judged again as if it had sent nothing; the count after its last page is what is left to judge it.
    guard_passed: bool = False
    #: A full or incremental run's template, as at its first start (None: a change run, whose templates are
    #: ``kind_templates``, or recorded before this was: the definition's template now). A definition switched to
    #: another template while the run is under way changes nothing for its resume, ranges and retries.
    template: str | None = None

    def as_json(self) -> dict[str, Any]:
        """As the checkpoint row keeps it (``announced``, ``watermark_column``, ``record_size``,
        ``kind_record_sizes``, ``kind_templates``, ``max_removed``, ``guard_passed`` and ``template`` only when set;
        ``max_removed`` null: the default bound)."""
        value: dict[str, Any] = {"mode": self.mode.value, "full_scope": self.full_scope, "counts": self.counts}
        if self.announced:
            value["announced"] = True
        if self.watermark_column is not None:
            value["watermark_column"] = self.watermark_column
        if self.record_size is not None:
            value["record_size"] = self.record_size
        if self.kind_record_sizes is not None:
            value["kind_record_sizes"] = self.kind_record_sizes
        if self.kind_templates is not None:
            value["kind_templates"] = self.kind_templates
        if self.removal_limit is not None:
            value["max_removed"] = self.removal_limit.written
        if self.guard_passed:
            value["guard_passed"] = True
        if self.template is not None:
            value["template"] = self.template
        return value

    @classmethod
    def of_json(cls, value: Any) -> RunSync | None:
        """From the checkpoint row (None: not fixed yet, e.g. a run started before this was recorded)."""
        if not isinstance(value, dict):
            return None
        return cls(
            SyncMode(value["mode"]),
            bool(value["full_scope"]),
            value.get("counts"),
            bool(value.get("announced")),
            value.get("watermark_column"),
            value.get("record_size"),
            value.get("kind_record_sizes"),
            value.get("kind_templates"),
            RemovalLimit.of(value["max_removed"]) if "max_removed" in value else None,
            bool(value.get("guard_passed")),
            value.get("template"),
        )


@dataclass(frozen=True)
class SendingPage:
    """A page being sent beyond a checkpoint, written ahead of its records: its members are the keys after the
    checkpoint's ``last_key`` up to ``last_key`` here, its batches numbered from the checkpoint's ``next_batch_index``
    up to ``next_batch_index`` here (excluded). A resume re-reads exactly those keys and splits them into the same
    batches (:mod:`services.extractor.page_bounds`): members deleted since make a batch smaller (none after it moves),
    members inserted between two batches since get batch indexes after the page's (never sent), and no member of a
    later page is moved into its batches. A change-mode run's page writes no ``batches``: its members' batches are
    the indexes they were staged under in the snapshot (:mod:`services.extractor.change_extraction`)."""

    last_key: Any
    next_batch_index: int
    #: Each batch's first and last member's key, as outcomes name members, and its member count (None: not known, e.g.
    #: no key column; the page is re-read whole and chunked again: members deleted or inserted move those after them).
    batches: list[list[str | int]] | None = None
    #: A resumed page's batches of members inserted since it was first sent (every key of each), numbered just before
    #: ``next_batch_index``: resumed again, it sends them under the same indexes (``batches`` is kept as first sent).
    inserted: list[list[str]] | None = None

    def as_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"last_key": self.last_key, "next_batch_index": self.next_batch_index}
        if self.batches is not None:
            value["batches"] = self.batches
        if self.inserted is not None:
            value["inserted"] = self.inserted
        return value

    @classmethod
    def of_json(cls, value: Any) -> SendingPage | None:
        if not isinstance(value, dict):
            return None
        return cls(value["last_key"], int(value["next_batch_index"]), value.get("batches"), value.get("inserted"))


@dataclass(frozen=True)
class Checkpoint:
    """Where an extraction stands: resume after ``last_key`` with batch ``next_batch_index``."""

    run_id: uuid.UUID
    last_key: Any
    next_batch_index: int
    members: int
    completed: bool
    watermark_since: Any = None
    watermark_until: Any = None
    #: How many key ranges the run was split into (extracted by several replicas); None when not split.
    ranges: int | None = None
    #: The run's sync mode and retry scope (fixed at its first start), and a change run's counts.
    sync: RunSync | None = None
    #: The run still going that held this scheduled run off when the scheduler withheld it (overlap skip): the run
    #: never starts (its checkpoint is done). None for any other run.
    withheld_for: uuid.UUID | None = None
    #: The page being sent after ``last_key`` (written ahead of its records, with the previous page's checkpoint):
    #: a resume re-reads exactly that page. None: no page sent beyond the checkpoint (or a checkpoint written by a
    #: release before this was recorded: the page is re-read by size).
    sending: SendingPage | None = None


@dataclass(frozen=True)
class RunClaim:
    """A run's claim at its start, in one transaction: its checkpoint (created if new; its sync fixed at the
    first start when the claim was asked to), whether this was its first start (no sync fixed before), its
    run record's status (None: no record yet), and how many pending retries it holds (None: none claimed)."""

    checkpoint: Checkpoint
    first_start: bool
    status: RunStatus | None = None
    retries: int | None = None


@dataclass(frozen=True)
class RunStart:
    """A run to start in bulk (the extraction store's ``start_runs``): its id, its definition's name, and how its
    sync is fixed at its first start (given the checkpoint and a save of it: the checkpoint with its sync)."""

    run_id: uuid.UUID
    definition: str
    fix_sync: Callable[[Checkpoint, Callable[[Checkpoint], None]], Checkpoint]


class RangeState(StrEnum):
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"  # every member of the range published
    STOPPED = "stopped"  # the run failed or was cancelled


@dataclass(frozen=True)
class RangeCheckpoint:
    """One key range of a split run: keys after ``lower`` (None: from the first) up to ``upper`` (None: to the
    last), batch indexes from ``first_batch_index`` up to ``end_batch_index`` (excluded), and its progress."""

    run_id: uuid.UUID
    range_index: int
    lower: Any
    upper: Any
    first_batch_index: int
    end_batch_index: int
    next_batch_index: int
    last_key: Any = None
    members: int = 0
    state: RangeState = RangeState.EXTRACTING
    #: The range's page being sent after ``last_key`` (see :attr:`Checkpoint.sending`).
    sending: SendingPage | None = None

    @classmethod
    def planned(
        cls, run_id: uuid.UUID, range_index: int, lower: Any, upper: Any, first_batch_index: int, end_batch_index: int
    ) -> RangeCheckpoint:
        """A range not extracted yet."""
        return cls(run_id, range_index, lower, upper, first_batch_index, end_batch_index, first_batch_index)

    @property
    def batches(self) -> int:
        return self.next_batch_index - self.first_batch_index

    @property
    def resume_after(self) -> Any:
        """The key the range's next page starts after."""
        return self.lower if self.last_key is None else self.last_key


@dataclass(frozen=True)
class RunTotals:
    """What a split run published, once every range is extracted."""

    members: int
    batches: int


@dataclass(frozen=True)
class WatermarkMove:
    """Move the watermark to ``value`` (the run's ``until``)."""

    value: Any


def watermark_after_success(*, exists: bool, current: Any, since: Any, until: Any) -> WatermarkMove | None:
    """Where a definition's watermark goes when a run that covered (``since``, ``until``] succeeds.

    Compare-and-set on the value the run started from: a run that started before another incremental
    run succeeded does not move the watermark back (its members are exported again by the next run
    rather than skipped). The first successful run (no watermark yet) sets it if it started from none.
    Deciding again for the same run changes nothing, so a redelivered event is harmless.
    """
    if until is None:
        return None
    if not exists:
        return WatermarkMove(until) if since is None else None
    return WatermarkMove(until) if current == since and current != until else None
