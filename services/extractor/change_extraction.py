"""Extract a change-mode run (``sync: {mode: changes}``): send only the members added, changed or removed since
the definition's last delivered snapshot, each kind with its own template.

1. The snapshot is loaded into memory (:class:`~shared.domain.change_index.ChangeIndex`, ~18 bytes a member).
2. Every page of the query is read (as rows) and each member fingerprinted (:mod:`shared.member_fingerprints`)
   and classified (~2 us a member; the classification itself ~0.15 us). Members to send wait in a buffer per
   kind; a full buffer becomes that kind's batch, and every buffer is flushed at the page's end (batches never
   span pages). The batch's members are *staged* in the snapshot (new values pending, with the batch index)
   before the batch is published, and the checkpoint (with the counts so far) moves once the broker has
   acknowledged the page's batches. Page N+1 is staged and sent only once page N is checkpointed, that UPDATE
   writing ahead page N+1's last key and the batch index after its batches (the checkpoint's ``sending``).
3. After the last page, the snapshot's members not seen are the removed ones: their last delivered values are
   read back and sent with the removed kind's template (the checkpoint records where their batches start).

A run whose removals are sent is held to its definition's ``sync.max_removed`` as at its first start (unless its
request allows a mass removal once): before its first page it counts its removals from the query's keys alone
(:mod:`services.extractor.removal_guard`) and, over the limit, fails having sent nothing and changed nothing in
the snapshot; its pass is recorded (the checkpoint's sync) before its first page is published, so a resume never
runs it again (it may have sent pages before any was checkpointed). After its last page it counts them again
(exact, cheap): members that left while it ran (a table emptied under it) fail it there, its removals not sent.

A resumed run (after a crash) reads the pages up to the checkpoint's last key only to mark their members seen (not
removed), sending and counting nothing: their batches were published and counted before the checkpoint, even if the
member store changed since. The page it was sending is re-read exactly (up to the key written ahead) and re-sent in
the batches it was staged in, under their indexes, with the values staged (members deleted or inserted since move no
member into another batch's identity; one inserted or changed since goes in a batch after the page's); then it goes
on from the checkpoint's counts with the pages after that page. A resume in the removal phase numbers the removals'
batches as before and publishes those from ``next_batch_index`` on. The kinds it sends, each kind's template and
members per record are those of the run's first start (recorded in its checkpoint's sync before its first batch is
sent): a kind's template named, set to ``false`` or its ``batch_size`` edited before a resume changes nothing until
the next run; so is the bound on its removals (``sync.max_removed``, recorded before its guard), which judges it to
its end. So nothing is lost, and a batch published twice has the same identity (the dispatcher's Idempotency-Key,
the notifier's ledger).

Change-mode runs are never split into key ranges: removals are the snapshot members no range saw, which only
one process reading every page knows (and the in-memory index is per process).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from services.extractor.removal_guard import KEY_PAGE, partner_members, removals_over_limit
from shared.application.ports import DefinitionsReader
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.change_index import ChangeIndex, Kind
from shared.domain.change_staging import InFlightStaging, SnapshotRun, StagedMember, Staging
from shared.domain.checkpoints import Checkpoint, RunSync, SendingPage
from shared.domain.member_hashes import key_hashes
from shared.domain.removal_limit import refusal_reason
from shared.domain.runs import RunStatus
from shared.domain.sync_mode import SyncMode
from shared.errors import NotFound, StoredObjectInvalid
from shared.events import ChangeCounts, ChangeKind
from shared.kafka import InFlight, Outgoing
from shared.member_batches import BatchEncoder, EncodedBatch, MemberTooLarge, members_per_record
from shared.member_fingerprints import Fingerprints, canonical_json
from shared.member_keys import row_key
from shared.querystore import JsonPage, MemberPages, MemberReader, Page
from shared.topics import Topics

log = structlog.get_logger(__name__)


class ChangeSnapshots(Protocol):
    """The snapshot store as the extractor uses it (:class:`shared.catalog.change_snapshots.SqlChangeSnapshots`)."""

    def begin(self, definition: str, run_id: str) -> SnapshotRun: ...
    def load(self, run: SnapshotRun) -> ChangeIndex: ...
    def stage(self, run: SnapshotRun, entries: list[Staging]) -> None: ...
    def stage_removed(self, run: SnapshotRun, batch_index: int | None, key_hashes: list[int]) -> None: ...
    def in_flight(self, run: SnapshotRun, first: int, end: int) -> InFlightStaging: ...
    def last_values(self, run: SnapshotRun, key_hashes: list[int]) -> dict[int, bytes]: ...
    def forget(self, run: SnapshotRun, key_hashes: list[int]) -> None: ...


class Host(Protocol):
    """What a change run uses of the :class:`~services.extractor.extraction.Extractor` that runs it."""

    reader: MemberReader
    topics: Topics
    send: Callable[[list[Outgoing]], InFlight]
    page_size: int
    max_record_bytes: int
    record_members: int

    @property
    def definitions(self) -> DefinitionsReader: ...  # read only: the extractor's may read more

    def _query(self, read: Callable[[], Any]) -> Any: ...
    def _stop_if(self, run_id: uuid.UUID, statuses: set[RunStatus] | frozenset[RunStatus]) -> None: ...
    def _timed(self, pages: MemberPages) -> Iterator[Page | JsonPage]: ...


#: Removed members whose last values one read fetches.
_REMOVED_READ = 5_000
#: What a change run's checkpoint keeps besides its counts, once its removal phase starts.
_REMOVALS_FROM, _MEMBERS_BEFORE_REMOVALS = "removals_from", "members_before_removals"


def page_keys(rows: Sequence[Sequence[Any]], at: int) -> list[str]:
    """The keys of a page's members (column ``at``) as their batch outcomes will name them
    (:func:`shared.member_keys.row_key`): a refused member's key must find its snapshot row."""
    return [row_key(row[at]) for row in rows]


@dataclass
class _Sender:
    """One kind's template, encoder and the members waiting for a full batch."""

    kind: ChangeKind
    template: str
    encoder: BatchEncoder
    size: int
    waiting: list[StagedMember] = field(default_factory=list)


@dataclass
class _Page:
    """What one page (or the removal phase) publishes: stagings, records, and the progress it reaches."""

    stagings: list[Staging] = field(default_factory=list)
    records: list[tuple[int, Outgoing]] = field(default_factory=list)
    removals: list[tuple[int, list[int]]] = field(default_factory=list)
    #: A resume's members sent again in the batches they were staged in (their key hashes), not waiting to be sent.
    resent: list[int] = field(default_factory=list)


def _run_sync(checkpoint: Checkpoint) -> RunSync:
    """The run's sync as its checkpoint has it (a change run's, should it have none)."""
    return checkpoint.sync if checkpoint.sync is not None else RunSync(SyncMode.CHANGES, full_scope=True)


class ChangeRun:
    """One change-mode run's extraction (see the module's docstring)."""

    def __init__(
        self,
        host: Host,
        snapshots: ChangeSnapshots,
        *,
        run_id: uuid.UUID,
        definition: ExportDefinition,
        query: SavedQuery,
        parameters: dict[str, Any],
        save: Callable[[Checkpoint], None],
        fail: Callable[[str, str], Exception],
        allow_mass_removal: bool = False,
        requested_parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.host, self.snapshots = host, snapshots
        self.run_id, self.definition, self.query, self.parameters = run_id, definition, query, parameters
        self.save, self.fail = save, fail
        #: The run request lets this run remove more than ``sync.max_removed`` (once, on purpose).
        self.allow_mass_removal = allow_mass_removal
        #: The parameters as the run was requested with them (``parameters`` binds the defaults too): a refusal's
        #: way through repeats them, so that the run allowed is this one.
        self.requested_parameters = dict(requested_parameters or {})
        self.topic = host.topics.member_batches_for(definition.priority.value)
        self.next_index = 0
        self.published = 0
        self.counts = {kind: 0 for kind in ("added", "changed", "unchanged", "removed")}
        #: The bound on the run's removals: as at its first start, once :meth:`extract` read it from the checkpoint
        #: (``sync.max_removed`` edited since judges the next run, not this one).
        self.limit = definition.sync.removal_limit

    def extract(self, checkpoint: Checkpoint) -> tuple[Checkpoint, ChangeCounts]:
        """Extract the run from ``checkpoint`` (a fresh one, or a resumed run's); its last checkpoint and counts."""
        if self.definition.incremental is not None:
            raise self.fail("change mode cannot be combined with 'incremental' (field 'sync.mode')", "invalid_sync")
        sync = _run_sync(checkpoint)
        senders = {kind: self._sender(kind, sync) for kind in ChangeKind}
        if sync.kind_templates is None or sync.removal_limit is None:
            # The run's first start (or first since this was recorded): before its guard and any batch.
            sent = {kind.value: sender for kind, sender in senders.items() if sender is not None}
            sizes = {kind: sender.size for kind, sender in sent.items()}
            templates = {kind: sender.template for kind, sender in sent.items()}
            limit = sync.removal_limit or self.definition.sync.removal_limit
            sync = replace(sync, kind_record_sizes=sizes, kind_templates=templates, removal_limit=limit)
            checkpoint = replace(checkpoint, sync=sync)
            self.save(checkpoint)
        assert sync.removal_limit is not None
        self.limit = sync.removal_limit
        try:
            run = self.snapshots.begin(self.definition.name, str(self.run_id))
        except NotFound as exc:  # deleted since the run started: its snapshot went with it
            raise self.fail(f"unknown definition: {exc}", "unknown_definition") from None
        index = self.snapshots.load(run)
        saved = dict(checkpoint.sync.counts or {}) if checkpoint.sync is not None else {}
        self.counts |= {kind: saved.get(kind, 0) for kind in self.counts}
        self.next_index, self.published = checkpoint.next_batch_index, checkpoint.members
        log.info(
            "change run: snapshot loaded",
            run_id=str(self.run_id),
            definition=self.definition.name,
            snapshot_members=len(index),
            snapshot_bytes=index.nbytes,
            resume_after=checkpoint.last_key,
            resume_from_batch=checkpoint.next_batch_index,
        )
        guarded = senders[ChangeKind.REMOVED] is not None  # removals not sent remove nothing at the partner
        fresh = checkpoint.last_key is None and checkpoint.next_batch_index == 0 and _REMOVALS_FROM not in saved
        if guarded and fresh and not sync.guard_passed:  # a resumed run may have sent pages: see _guard_passed
            self._guard_before_sending(index)
            checkpoint = self._guard_passed(checkpoint)
        if checkpoint.last_key is not None:
            self._see(index, checkpoint.last_key)
        state = checkpoint
        if _REMOVALS_FROM not in saved:  # else every page was read (members selected since: the next run's)
            state = self._pages(run, index, senders, state)
            if guarded:
                self._guard_removals(index)
        state, resume_from = self._removal_phase(state, saved)
        state = self._removed(run, index, senders[ChangeKind.REMOVED], state, resume_from)
        counts = ChangeCounts(**self.counts)
        log.info("change run classified", run_id=str(self.run_id), **self.counts, published=self.published)
        return replace(state, next_batch_index=self.next_index, members=self.published), counts

    def _pages(
        self, run: SnapshotRun, index: ChangeIndex, senders: dict[ChangeKind, _Sender | None], state: Checkpoint
    ) -> Checkpoint:
        """Classify and publish the pages after the checkpoint's last key (a resume's page that was being sent
        first: :meth:`_resent`); the checkpoint after the last one."""
        in_flight: tuple[list[InFlight], Checkpoint] | None = None
        after = state.last_key
        if state.sending is not None:
            after = state.sending.last_key
            state, in_flight = self._publish(run, self._resent(run, index, senders, state), state, None, 0, after)
        pages: MemberPages = self.host._query(
            lambda: self.host.reader.member_pages(
                self.query,
                page_size=self.host.page_size,
                after=after,
                parameters=self.parameters,
                database_json=False,
            )
        )
        with pages:
            for page in self.host._timed(pages):
                assert isinstance(page, Page), "change runs read rows"
                out = self._classify(index, page, senders)
                self._flush_pages(senders, out)
                state, in_flight = self._publish(run, out, state, in_flight, 0, page.last_key)
                self.host._stop_if(self.run_id, {RunStatus.CANCELLED})
        return state if in_flight is None else self._settle(*in_flight, state)

    def _flush_pages(self, senders: dict[ChangeKind, _Sender | None], out: _Page) -> None:
        for sender in senders.values():  # batches never span pages: a resume starts at a page's end
            if sender is not None and sender.kind is not ChangeKind.REMOVED:
                self._flush(sender, out)

    def _resent(
        self, run: SnapshotRun, index: ChangeIndex, senders: dict[ChangeKind, _Sender | None], state: Checkpoint
    ) -> _Page:
        """A resume's page that was being sent (its keys and the batch indexes after it written ahead of its records:
        ``state.sending``), re-read exactly and sent again in the batches it was sent in: each batch staged under
        those indexes and still awaiting its outcome again, with the members and values staged (a member deleted
        since too; one whose values changed since: as sent, its change the next run's), under its index; a member
        of the page not staged under them (inserted, or changed since it was read) in a batch after the page's.
        Members deleted or inserted since move no other member into another batch's identity. Nothing staged under
        them (stopped before the page's staging): nothing was sent, its members are batched anew from the same
        index."""
        sending = state.sending
        assert sending is not None
        columns: tuple[str, ...] = ()
        rows: list[Any] = []
        pages: MemberPages = self.host._query(
            lambda: self.host.reader.member_pages(
                self.query,
                page_size=self.host.page_size,
                after=state.last_key,
                until=sending.last_key,
                parameters=self.parameters,
                database_json=False,
            )
        )
        with pages:
            for page in self.host._timed(pages):
                assert isinstance(page, Page), "change runs read rows"
                columns, rows = page.columns, rows + list(page.rows)
        staging = self.snapshots.in_flight(run, state.next_batch_index, sending.next_batch_index)
        self.next_index = sending.next_batch_index if staging.staged else state.next_batch_index
        out = _Page()
        positions: dict[int, int] = {}
        if rows:
            page = Page(columns, rows, sending.last_key)
            hashes = key_hashes(page_keys(rows, self._key_at(page)))
            positions = {int(h): p for p, h in enumerate(hashes.tolist())}
            resent = index.staged_in_run(hashes) if staging.staged else None
            out = self._classify(index, page, senders, resent=resent)
            awaiting = {m.key_hash for batch in staging.batches for m in batch.members}
            # Those whose batch's outcome was folded already: sent (not again), not counted yet.
            self.published += sum(1 for h in out.resent if h not in awaiting)
        for batch in staging.batches:
            sender = senders[batch.kind]
            if sender is None:  # not sent at the run's first start: never staged under an index
                continue
            members = sorted(batch.members, key=lambda m: positions.get(m.key_hash, len(positions)))
            try:
                encoded = sender.encoder.encode_json_page([m.values for m in members], batch.batch_index)
            except MemberTooLarge as exc:
                raise self.fail(str(exc), "member_too_large") from None
            first = encoded[0]
            out.records.append(
                (first.batch_index, Outgoing(self.topic, f"{self.run_id}:{first.batch_index}", first.value))
            )
            self.published += first.members
            # Values over a record's bound now (max_record_bytes lowered since): the others in a batch after the page's.
            sender.waiting += members[first.members :]
        self._flush_pages(senders, out)
        return out

    # --- the guard against mass removals (sync.max_removed) -------------------------------------------------

    def _guard_before_sending(self, index: ChangeIndex) -> None:
        """Fail the run before it sends anything if its query's keys leave more of the partner's members out
        than ``sync.max_removed`` allows (see :mod:`services.extractor.removal_guard`)."""
        limit = self.limit
        if self.allow_mass_removal or limit.never_exceeded(partner_members(index)):
            return
        pages = self.host.reader.key_pages(self.query, page_size=KEY_PAGE, parameters=self.parameters)

        def key_pages() -> Iterator[list[Any]]:
            while (keys := self.host._query(lambda: next(pages, None))) is not None:
                yield keys
                self.host._stop_if(self.run_id, {RunStatus.CANCELLED})

        removed = removals_over_limit(index, limit, key_pages())
        if removed is not None:
            self._refuse(index, removed)

    def _guard_passed(self, checkpoint: Checkpoint) -> Checkpoint:
        """The checkpoint with the guard's pass recorded, saved before the run's first page is published: a crash
        after some of its pages were sent but before their checkpoint resumes with no last key, and the guard run
        again would judge a run that has sent members as one that sent nothing (members that left meanwhile: a
        refusal saying "nothing was sent"). Its resume is judged by the count after its last page instead."""
        checkpoint = replace(checkpoint, sync=replace(_run_sync(checkpoint), guard_passed=True))
        self.save(checkpoint)
        return checkpoint

    def _guard_removals(self, index: ChangeIndex) -> None:
        """After the last page, the exact count: over the limit (members that left while the run ran), the run
        fails before its removals are sent (they stay in the snapshot)."""
        delivered, removed = partner_members(index), len(index.removed())
        if not self.limit.exceeded(removed, delivered):
            return
        if self.allow_mass_removal:
            log.warning(
                "mass removal allowed by the run request",
                run_id=str(self.run_id),
                definition=self.definition.name,
                removed=removed,
                partner_members=delivered,
                max_removed=self.limit.setting,
            )
            return
        self._refuse(index, removed)

    def _refuse(self, index: ChangeIndex, removed: int) -> None:
        limit, delivered = self.limit, partner_members(index)
        reason = refusal_reason(
            limit,
            removed=removed,
            delivered=delivered,
            definition=self.definition.name,
            sent=self.published,
            parameters=self.requested_parameters,
        )
        raise self.fail(reason, "mass_removal")

    def _see(self, index: ChangeIndex, last_key: Any) -> None:
        """A resumed run: mark the members up to ``last_key`` seen (not removed), sending and counting nothing:
        the batches of those pages were published and counted before the checkpoint."""
        pages: MemberPages = self.host._query(
            lambda: self.host.reader.member_pages(
                self.query,
                page_size=self.host.page_size,
                until=last_key,
                parameters=self.parameters,
                database_json=False,
            )
        )
        with pages:
            for page in self.host._timed(pages):
                assert isinstance(page, Page), "change runs read rows"
                at = self._key_at(page)
                hashes = key_hashes(page_keys(page.rows, at))
                index.classify(hashes, np.zeros(len(hashes), dtype=np.int64))

    def _removal_phase(self, state: Checkpoint, saved: dict[str, int]) -> tuple[Checkpoint, int]:
        """Where the removals' batches start (recorded once, so a resume in the removal phase numbers them the
        same way), and the first one not published yet."""
        if _REMOVALS_FROM in saved:
            self.next_index, self.published = saved[_REMOVALS_FROM], saved[_MEMBERS_BEFORE_REMOVALS]
            return state, state.next_batch_index
        marks = {_REMOVALS_FROM: self.next_index, _MEMBERS_BEFORE_REMOVALS: self.published}
        state = replace(state, sync=self._sync(state, marks))
        self.save(state)
        return state, 0

    def _sync(self, state: Checkpoint, extra: dict[str, int] | None = None) -> RunSync:
        sync = _run_sync(state)
        marks = {k: v for k, v in (sync.counts or {}).items() if k not in self.counts}
        return replace(sync, counts=dict(self.counts) | marks | (extra or {}))

    # --- classification -------------------------------------------------------------------------------------

    def _sender(self, kind: ChangeKind, sync: RunSync) -> _Sender | None:
        """The kind's sender (None: not sent). Whether it is sent, with which template and how many members a record
        holds, as fixed at the run's first start (``sync``): a kind's template named or set to ``false`` before a
        resume would send the pages read again with other batches under the identities their records had (and that
        kind for part of the run only), a ``batch_size`` edited would re-chunk them. A run recorded before its
        templates were (sizes only) sends the kinds it has sizes for, with the templates its definition names now."""
        fixed = sync.kind_record_sizes
        if sync.kind_templates is not None:
            name = sync.kind_templates.get(kind.value)
        elif fixed is not None and kind.value not in fixed:
            name = None  # not sent at the run's first start
        else:
            name = self.definition.sync.template_for(kind, self.definition.template)
        if name is None:
            return None
        try:
            template = self.host.definitions.get(HttpTemplate, name)
        except (NotFound, StoredObjectInvalid) as exc:
            raise self.fail(f"the {kind.value} members' template: {exc}", "missing_object") from None
        size = (fixed or {}).get(kind.value) or members_per_record(template.batch_size, self.host.record_members)
        encoder = BatchEncoder(
            run_id=self.run_id,
            definition=self.definition.name,
            template=template.name,
            priority=self.definition.priority,
            batch_size=size,
            max_record_bytes=self.host.max_record_bytes,
            key_column=self.query.key_column,
            change=kind,
        )
        return _Sender(kind, name, encoder, size)

    def _key_at(self, page: Page) -> int:
        columns = list(page.columns)
        if self.query.key_column not in columns:
            raise self.fail(f"query '{self.query.name}' returns no key column '{self.query.key_column}'", "query_error")
        return columns.index(self.query.key_column)

    def _classify(
        self,
        index: ChangeIndex,
        page: Page,
        senders: dict[ChangeKind, _Sender | None],
        *,
        resent: npt.NDArray[np.bool_] | None = None,
    ) -> _Page:
        """The page's members classified and counted, those to send waiting in their kind's sender (its batches
        flushed once full); ``resent``: the members sent again in the batches they were staged in (counted only)."""
        columns = list(page.columns)
        at = self._key_at(page)
        keys = page_keys(page.rows, at)
        hashes = key_hashes(keys, count=len(keys))
        fingerprint = Fingerprints(columns)
        fingerprints = np.fromiter((fingerprint(row) for row in page.rows), dtype=np.int64, count=len(keys))
        kinds = index.classify(hashes, fingerprints)
        tally = np.bincount(kinds, minlength=3)
        self.counts["unchanged"] += int(tally[Kind.UNCHANGED])
        self.counts["added"] += int(tally[Kind.ADDED])
        self.counts["changed"] += int(tally[Kind.CHANGED])
        out = _Page()
        unsent: dict[ChangeKind, list[StagedMember]] = {ChangeKind.ADDED: [], ChangeKind.CHANGED: []}
        for position in np.flatnonzero(kinds != Kind.UNCHANGED).tolist():
            kind = ChangeKind.ADDED if kinds[position] == Kind.ADDED else ChangeKind.CHANGED
            values = canonical_json(columns, page.rows[position])  # only for the members sent
            member = StagedMember(int(hashes[position]), keys[position], int(fingerprints[position]), values)
            sender = senders[kind]
            if sender is None:
                unsent[kind].append(member)
                continue
            if resent is not None and resent[position]:
                out.resent.append(member.key_hash)
                continue
            sender.waiting.append(member)
            if len(sender.waiting) >= sender.size:
                self._flush(sender, out)
        # A kind without a template is not sent: the snapshot takes its members as they are now.
        out.stagings += [Staging(kind, None, members) for kind, members in unsent.items() if members]
        return out

    def _removed(
        self, run: SnapshotRun, index: ChangeIndex, sender: _Sender | None, state: Checkpoint, resume_from: int
    ) -> Checkpoint:
        """The snapshot's members not seen: removed (sent if the kind has a template); the never-delivered ones
        no longer selected are forgotten. A chunk of removed members at a time (their last values read, their
        batches staged, published and checkpointed), so that a run removing millions holds a chunk's values."""
        forgotten = index.forgotten()
        for start in range(0, len(forgotten), _REMOVED_READ):
            self.snapshots.forget(run, forgotten[start : start + _REMOVED_READ].tolist())
        removed = index.removed()  # a numpy array: 8 bytes a member
        self.counts["removed"] = len(removed)
        in_flight: tuple[list[InFlight], Checkpoint] | None = None
        for start in range(0, len(removed), _REMOVED_READ):
            chunk = removed[start : start + _REMOVED_READ].tolist()
            if sender is None:
                self.snapshots.stage_removed(run, None, chunk)
                continue
            out = _Page()
            values = self.snapshots.last_values(run, chunk)
            for h in chunk:
                sender.waiting.append(StagedMember(h, "", 0, values.get(h, b"{}")))
                if len(sender.waiting) >= sender.size:
                    self._flush(sender, out)
            if start + _REMOVED_READ >= len(removed):
                self._flush(sender, out)
            state, in_flight = self._publish(run, out, state, in_flight, resume_from, state.last_key, write_ahead=False)
        return state if in_flight is None else self._settle(*in_flight, state)

    def _flush(self, sender: _Sender, out: _Page) -> None:
        """The waiting members of ``sender`` as that kind's batches, numbered on from ``next_index``."""
        members, sender.waiting = sender.waiting, []
        if not members:
            return
        try:
            batches: list[EncodedBatch] = sender.encoder.encode_json_page([m.values for m in members], self.next_index)
        except MemberTooLarge as exc:
            raise self.fail(str(exc), "member_too_large") from None
        start = 0
        for batch in batches:
            chunk = members[start : start + batch.members]
            start += batch.members
            if sender.kind is ChangeKind.REMOVED:
                out.removals.append((batch.batch_index, [m.key_hash for m in chunk]))
            else:
                out.stagings.append(Staging(sender.kind, batch.batch_index, chunk))
            record = Outgoing(self.topic, f"{self.run_id}:{batch.batch_index}", batch.value)
            out.records.append((batch.batch_index, record))
        self.next_index += len(batches)
        self.published += len(members)

    # --- publishing -----------------------------------------------------------------------------------------

    def _publish(
        self,
        run: SnapshotRun,
        out: _Page,
        state: Checkpoint,
        in_flight: tuple[list[InFlight], Checkpoint] | None,
        resume_from: int,
        last_key: Any,
        *,
        write_ahead: bool = True,
    ) -> tuple[Checkpoint, tuple[list[InFlight], Checkpoint] | None]:
        """Settle the previous page (its checkpoint saved once the broker acknowledged it, with this page's end and
        the batch index after it written ahead: :attr:`Checkpoint.sending`), then stage and publish what ``out``
        holds from ``resume_from`` on (before it: published before a resume). A crash repeats at most this page,
        in the batches it was staged in (:meth:`_resent`). The removal phase writes nothing ahead: its batches are
        numbered from the snapshot alone."""
        fresh = [s for s in out.stagings if s.batch_index is None or s.batch_index >= resume_from]
        removals = [(i, hashes) for i, hashes in out.removals if i >= resume_from]
        records = [record for i, record in out.records if i >= resume_from]
        ahead = SendingPage(last_key, self.next_index) if records and write_ahead else None
        if in_flight is not None:
            state = self._settle(in_flight[0], replace(in_flight[1], sending=ahead), state)
        elif ahead is not None and state.sending != ahead:  # the first page after a (re)start, on its own
            state = replace(state, sending=ahead)
            self.save(state)
        if fresh:
            self.snapshots.stage(run, fresh)
        for batch_index, hashes in removals:
            self.snapshots.stage_removed(run, batch_index, hashes)
        sent = [self.host.send(records)] if records else []
        reached = replace(
            state,
            last_key=last_key,
            next_batch_index=self.next_index,
            members=self.published,
            sync=self._sync(state),
            sending=None,
        )
        return state, (sent, reached)

    def _settle(self, sent: list[InFlight], reached: Checkpoint, state: Checkpoint) -> Checkpoint:
        for records in sent:
            records.wait()
        if reached != state:  # a page of unchanged members moves the checkpoint too (its counts, its last key)
            self.save(reached)
        return reached
