"""A small run's catalog work in the extractor: how many catalog transactions each kind of start costs (counted
on the catalog's engine, SQLite and PostgreSQL), and what folding the last page's checkpoint into the
completion, and checking for a cancel before each page but the first, mean for a crash and a late cancel; runs
started together ahead of their extraction (services/extractor/bulk_starts.py): one claim for all, and one
``run.started`` each however often and wherever their requests are handled after.

The records the extractor sends are acknowledged at once (no Kafka): what is counted is the catalog's work."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from sqlalchemy import event

from services.extractor.extraction import Extractor
from services.extractor.scheduled_runs import StartTimes
from shared.catalog import CatalogStores, SqlChangeSnapshots, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.runs import RunStatus
from shared.events import (
    RUN_EVENT_ADAPTER,
    ExtractionCompleted,
    MemberBatch,
    RangeRequested,
    RunCancelled,
    RunRequested,
    RunSkipped,
    RunStarted,
    Trigger,
)
from shared.kafka import InFlight, Outgoing
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

TOPICS = CommonSettings().topics
#: A run published ahead of this instant (the clock the extractor's start times read says it is due).
INSTANT = dt.datetime(2031, 5, 6, 7, 8, tzinfo=dt.UTC)


@dataclass
class Sent:
    """The records an extractor sent (each acknowledged at once), and a hook called with each send."""

    records: list[Outgoing] = field(default_factory=list)
    hook: Any = None

    def __call__(self, outgoing: list[Outgoing]) -> InFlight:
        self.records.extend(outgoing)
        if self.hook is not None:
            self.hook(outgoing)
        return InFlight([], timeout_seconds=1.0)

    def batches(self) -> list[MemberBatch]:
        return [MemberBatch.model_validate_json(r.value) for r in self.records if r.topic != TOPICS.run_events]

    def batch_keys(self) -> list[str]:
        return [r.key for r in self.records if r.topic != TOPICS.run_events]

    def events(self) -> list[Any]:
        return [RUN_EVENT_ADAPTER.validate_json(r.value) for r in self.records if r.topic == TOPICS.run_events]


class Transactions:
    """Catalog transactions begun on the engine (an ORM session's or a connection's), while counting."""

    def __init__(self, catalog: CatalogStores) -> None:
        self.count = 0
        event.listen(catalog.database.engine, "begin", self._begun)

    def _begun(self, _connection: object) -> None:
        self.count += 1

    def of(self, action: Any) -> int:
        """How many transactions ``action()`` began."""
        before = self.count
        action()
        return self.count - before


@pytest.fixture
def members_url(tmp_path: Any) -> str:
    url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(url)
    create_demo_members(engine, 250)
    engine.dispose()
    return url


@pytest.fixture
def small(catalog: CatalogStores) -> CatalogStores:
    """The catalog with a three-member definition (``few``), a 250-member one in pages of 100 (``paged``), a
    change-mode one (``changes``) and a scheduled one due at INSTANT (``due``)."""
    on = {"date": INSTANT.date().isoformat(), "time": INSTANT.strftime("%H:%M")}
    catalog.definitions.apply_all(
        [
            ConnectionProfile(name="p", base_url="http://127.0.0.1:9"),
            SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 3"),
            SavedQuery(name="all", sql="SELECT id, email FROM members"),
            HttpTemplate(name="t", query="few", profile="p", batch_size=100),
            HttpTemplate(name="t-small", query="all", profile="p", batch_size=10),
            ExportDefinition(name="few", query="few", template="t"),
            ExportDefinition(name="paged", query="all", template="t-small"),
            ExportDefinition(name="changes", query="few", template="t", sync={"mode": "changes"}),
            ExportDefinition.model_validate(
                {"name": "due", "query": "few", "template": "t", "schedule": {"enabled": True, "once": on}}
            ),
        ]
    )
    return catalog


def _extractor(catalog: CatalogStores, reader: MemberReader, **options: Any) -> Extractor:
    return Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=reader,
        topics=TOPICS,
        send=Sent(),
        page_size=100,
        record_members=10,
        retries=catalog.retries,
        snapshots=SqlChangeSnapshots(catalog.database),
        start_times=StartTimes(max_wait=dt.timedelta(seconds=60), now=lambda: INSTANT),
        **options,
    )


@pytest.fixture
def reader(members_url: str) -> Iterator[MemberReader]:
    reader = MemberReader.from_url(members_url)
    yield reader
    reader.close()


@pytest.fixture
def extractor(small: CatalogStores, reader: MemberReader) -> Extractor:
    return _extractor(small, reader)


def _sent(extractor: Extractor) -> Sent:
    assert isinstance(extractor.send, Sent)
    return extractor.send


def _completed(sent: Sent) -> list[ExtractionCompleted]:
    return [e for e in sent.events() if isinstance(e, ExtractionCompleted)]


def test_a_small_run_costs_three_catalog_transactions(extractor: Extractor, small: CatalogStores):
    # The definition, query and template (one read); the claim (checkpoint, sync, status, retries); the completion.
    # (Eleven before: three object reads, the claim, the status twice, the sync, the retries, three saves.)
    transactions = Transactions(small)
    request = RunRequested(definition="few")
    assert transactions.of(lambda: extractor.handle(request)) == 3
    [completed] = _completed(_sent(extractor))
    assert (completed.members, completed.batches) == (3, 1)
    assert small.extraction.claim_extraction(request.run_id, "few").completed
    # A redelivered request: the read and the claim, which finds the run done.
    assert transactions.of(lambda: extractor.handle(request)) == 2
    assert len(_completed(_sent(extractor))) == 1


def test_a_paged_run_checks_for_a_cancel_and_saves_its_checkpoint_between_pages(
    extractor: Extractor, small: CatalogStores
):
    # Three pages: a status read and a checkpoint save before each page but the first (the save says where the
    # page sent next ends), and the first page's end written ahead of it; the last page's checkpoint is the
    # completion's.
    transactions = Transactions(small)
    assert transactions.of(lambda: extractor.handle(RunRequested(definition="paged"))) == 3 + 2 * 2 + 1
    [completed] = _completed(_sent(extractor))
    assert (completed.members, completed.batches) == (250, 25)


def test_a_resumed_run_costs_three_catalog_transactions_and_repeats_its_last_page_with_the_same_identities(
    extractor: Extractor, small: CatalogStores
):
    request = RunRequested(definition="paged")
    saved = small.extraction.save_checkpoint

    def dying_at_completion(checkpoint: Any) -> None:
        if checkpoint.completed:
            raise RuntimeError("the extractor dies once extraction.completed is acknowledged")
        saved(checkpoint)

    small.extraction.save_checkpoint = dying_at_completion  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        extractor.handle(request)
    small.extraction.save_checkpoint = saved  # type: ignore[method-assign]
    first = _sent(extractor)
    first_batches = {(b.batch_index, first.batch_keys()[i]): b for i, b in enumerate(first.batches())}
    [first_completed] = _completed(first)

    again = Sent()
    extractor.send = again
    transactions = Transactions(small)
    # Resumed after the second page's checkpoint: the definition read, the claim, the completion (eight before).
    assert transactions.of(lambda: extractor.handle(request)) == 3
    repeated = again.batches()
    # The last page again (members 201-250), with the same batch indexes, record keys and members.
    assert [b.batch_index for b in repeated] == list(range(20, 25))
    for key, batch in zip(again.batch_keys(), repeated, strict=True):
        assert key == f"{request.run_id}:{batch.batch_index}"
        assert first_batches[(batch.batch_index, key)] == batch
    assert [type(e) for e in again.events()] == [RunStarted, ExtractionCompleted]  # both said again
    [completed] = _completed(again)
    said = ("run_id", "definition", "members", "batches", "retries", "changes")
    assert [getattr(completed, f) for f in said] == [getattr(first_completed, f) for f in said]
    assert (completed.members, completed.batches) == (250, 25)
    assert small.extraction.claim_extraction(request.run_id, "paged").completed


def test_a_run_published_ahead_is_judged_before_its_sync_is_fixed(extractor: Extractor, small: CatalogStores):
    definition_id = small.definitions.get_with_id(ExportDefinition, "due")[0]
    request = RunRequested(
        definition="due",
        trigger=Trigger.SCHEDULE,
        requested_at=INSTANT - dt.timedelta(seconds=5),
        requested_by="scheduler",
        scheduled_for=INSTANT,
        definition_id=definition_id,
    )
    transactions = Transactions(small)
    # The read; the claim (not fixing the sync); the definition's other active runs (overlap ``skip``, the
    # default); once judged to start, the claim fixing it (and taking retries); the completion. (Twelve before.)
    assert transactions.of(lambda: extractor.handle(request)) == 5
    [completed] = _completed(_sent(extractor))
    assert (completed.members, completed.batches) == (3, 1)

    # Withdrawn (disabled since it was published): nothing started, the run marked done.
    small.definitions.apply(
        ExportDefinition.model_validate(
            {"name": "due", "query": "few", "template": "t", "schedule": {"enabled": False}}
        )
    )
    withdrawn = RunRequested(**(request.model_dump() | {"run_id": uuid.uuid4()}))
    sent_before = len(_sent(extractor).records)
    assert transactions.of(lambda: extractor.handle(withdrawn)) == 3  # the read, the claim, marked done
    assert len(_sent(extractor).records) == sent_before
    checkpoint = small.extraction.claim_extraction(withdrawn.run_id, "due")
    assert checkpoint.completed
    assert checkpoint.sync is None


def test_a_change_mode_run_claims_no_retries(extractor: Extractor, small: CatalogStores):
    transactions = Transactions(small)
    request = RunRequested(definition="changes")
    count = transactions.of(lambda: extractor.handle(request))
    [completed] = _completed(_sent(extractor))
    assert completed.changes is not None
    assert completed.changes.added == 3
    # The read and the claim, the snapshot's own work (see change_extraction.py), its kinds' record sizes fixed in
    # its checkpoint's sync before its first batch (session 51), its first page's end written ahead of its records
    # (session 55: a resume re-sends exactly that page's batches), the completion (fifteen before session 49).
    assert count == 13
    assert small.retries.claimed(request.run_id) == 0  # no claim recorded


def test_a_cancel_during_a_run_s_last_page_lets_its_extraction_complete_and_the_run_stays_cancelled(
    extractor: Extractor, small: CatalogStores
):
    request = RunRequested(definition="paged")
    sent = _sent(extractor)
    pages = 0

    def cancel_at_the_last_page(outgoing: list[Outgoing]) -> None:
        nonlocal pages
        if any(o.topic != TOPICS.run_events for o in outgoing):
            pages += 1
            if pages == 3:  # the last page is on its way: an operator cancels the run
                small.runs.fold_run_event(RunCancelled(run_id=request.run_id, definition="paged", requested_by="ops"))

    sent.hook = cancel_at_the_last_page
    extractor.handle(request)
    events = sent.events()
    [completed] = _completed(sent)
    assert (completed.members, completed.batches) == (250, 25)
    for run_event in events:  # as the notifier folds them, after the cancel
        small.runs.fold_run_event(run_event)
    record = small.runs.get_run(request.run_id)
    assert record is not None
    assert record.status is RunStatus.CANCELLED

    # A cancel before a later page stops the run there: no completion.
    stopped = RunRequested(definition="paged")
    pages, sent.records = 0, []

    def cancel_at_the_first_page(outgoing: list[Outgoing]) -> None:
        nonlocal pages
        if any(o.topic != TOPICS.run_events for o in outgoing):
            pages += 1
            if pages == 1:
                small.runs.fold_run_event(RunCancelled(run_id=stopped.run_id, definition="paged", requested_by="ops"))

    sent.hook = cancel_at_the_first_page
    assert extractor.handle(stopped) == []
    assert not _completed(sent)
    assert pages == 1
    assert small.extraction.claim_extraction(stopped.run_id, "paged").completed


def _due_request(catalog: CatalogStores) -> RunRequested:
    """The run of ``due`` published ahead of INSTANT, as the scheduler publishes it."""
    return RunRequested(
        definition="due",
        trigger=Trigger.SCHEDULE,
        requested_at=INSTANT - dt.timedelta(seconds=5),
        requested_by="scheduler",
        scheduled_for=INSTANT,
        definition_id=catalog.definitions.get_with_id(ExportDefinition, "due")[0],
    )


def _started(sent: Sent) -> Counter[uuid.UUID]:
    return Counter(e.run_id for e in sent.events() if isinstance(e, RunStarted))


def test_a_burst_is_started_in_one_claim_then_extracted_each_with_one_run_started(
    extractor: Extractor, small: CatalogStores
):
    burst = [RunRequested(definition="few") for _ in range(6)] + [_due_request(small)]
    cancelled = RunRequested(definition="few")
    small.runs.fold_run_event(RunCancelled(run_id=cancelled.run_id, definition="few", requested_by="ops"))
    transactions = Transactions(small)
    # Every run's definition, query and template (one read); the other active runs of the scheduled run's
    # definition (overlap ``skip``); every claim, run.started acknowledged before it commits (one transaction).
    assert transactions.of(lambda: extractor.starts([*burst, cancelled])) == 3
    sent = _sent(extractor)
    assert _started(sent) == dict.fromkeys((r.run_id for r in burst), 1), "the cancelled run is not started"
    assert len(sent.records) == len(burst)  # nothing else yet: no member read
    # Given again (a later round, their requests handed back): nothing read, nothing claimed, nothing said.
    assert transactions.of(lambda: extractor.starts(burst)) == 0

    for request in burst:
        # Its definition read, its claim (which finds it started: no judgement, no run.started), its completion.
        assert transactions.of(lambda r=request: extractor.handle(r)) == 3
    assert extractor.handle(cancelled) == []
    assert _started(sent) == dict.fromkeys((r.run_id for r in burst), 1), "no second run.started"
    completed = _completed(sent)
    assert Counter(c.run_id for c in completed) == dict.fromkeys((r.run_id for r in burst), 1)
    assert {(c.members, c.batches) for c in completed} == {(3, 1)}
    assert small.extraction.claim_extraction(cancelled.run_id, "few").completed
    # Handled again (a redelivery after the round's commit was lost): done, nothing said again.
    before = len(sent.records)
    for request in burst:
        extractor.handle(request)
    assert len(sent.records) == before


def test_a_run_started_together_and_redelivered_to_another_extractor_resumes_without_a_second_start(
    extractor: Extractor, small: CatalogStores, reader: MemberReader
):
    request = RunRequested(definition="paged")
    assert extractor.starts([request]) == 1
    # The extractor dies before extracting it; the request goes to another (which remembers nothing).
    other = _extractor(small, reader)
    transactions = Transactions(small)
    assert other.starts([request]) == 0  # its claim again: started before, left to the one-by-one path
    assert transactions.of(lambda: other.handle(request)) == 3 + 2 * 2 + 1  # as a paged run's (see above)
    sent = _sent(other)
    assert not _started(sent)
    [completed] = _completed(sent)
    assert (completed.members, completed.batches) == (250, 25)
    assert _started(_sent(extractor)) == {request.run_id: 1}


def test_a_start_together_whose_run_started_is_not_acknowledged_records_nothing(
    extractor: Extractor, small: CatalogStores
):
    request = RunRequested(definition="few")
    sent = _sent(extractor)

    def broker_away(_outgoing: list[Outgoing]) -> None:
        raise ConnectionError("the broker is away")

    sent.hook = broker_away
    with pytest.raises(ConnectionError):
        extractor.starts([request])
    assert small.extraction.claim_extraction(request.run_id, "few").sync is None  # the claim rolled back
    sent.hook, sent.records = None, []
    extractor.handle(request)  # started one by one, as the round does after a failed start together
    assert _started(sent) == {request.run_id: 1}
    assert len(_completed(sent)) == 1


def test_scheduled_runs_not_to_start_are_left_to_the_one_by_one_judgement(extractor: Extractor, small: CatalogStores):
    sent = _sent(extractor)
    # Another run of ``due`` is active: overlap ``skip``: not started together, recorded skipped one by one.
    other = uuid.uuid4()
    small.runs.fold_run_event(RunStarted(run_id=other, definition="due", trigger=Trigger.MANUAL))
    overlapping = _due_request(small)
    assert extractor.starts([overlapping]) == 0
    assert not sent.records
    assert extractor.handle(overlapping) == []
    [skipped] = sent.events()
    assert isinstance(skipped, RunSkipped)
    assert skipped.run_id == overlapping.run_id

    # Disabled since it was published: withdrawn, nothing said, the run marked done with no sync fixed.
    small.definitions.apply(
        ExportDefinition.model_validate(
            {"name": "due", "query": "few", "template": "t", "schedule": {"enabled": False}}
        )
    )
    withdrawn = RunRequested(**(_due_request(small).model_dump() | {"run_id": uuid.uuid4()}))
    sent.records = []
    assert extractor.starts([withdrawn]) == 0
    assert extractor.handle(withdrawn) == []
    assert not sent.records
    checkpoint = small.extraction.claim_extraction(withdrawn.run_id, "due")
    assert checkpoint.completed
    assert checkpoint.sync is None


def test_a_cancel_during_a_split_run_s_last_range_s_last_page_lets_it_complete_and_the_run_stays_cancelled(
    small: CatalogStores, reader: MemberReader
):
    # 250 members in two ranges (one a partition of the run-requests topic), pages of 100 members.
    extractor = _extractor(small, reader, range_members=100, run_request_partitions=lambda: 2)
    request = RunRequested(definition="paged")
    ranges = [RangeRequested.model_validate_json(o.value) for o in extractor.handle(request)]
    assert [r.range_index for r in ranges] == [0, 1]
    sent = _sent(extractor)
    first, last = ranges
    extractor.handle(first)
    pages = 0

    def cancel_at_the_last_page(outgoing: list[Outgoing]) -> None:
        nonlocal pages
        if any(o.topic != TOPICS.run_events for o in outgoing):
            pages += 1
            if pages == 2:  # the last range's last page (of two) is on its way: an operator cancels the run
                small.runs.fold_run_event(RunCancelled(run_id=request.run_id, definition="paged", requested_by="ops"))

    sent.hook = cancel_at_the_last_page
    extractor.handle(last)
    assert pages == 2
    [completed] = _completed(sent)  # no cancel check after a range's last page: its run's extraction completes
    assert (completed.members, completed.batches) == (250, 26)  # 13 batches of 10 a range (125 members each)
    for run_event in sent.events():  # as the notifier folds them, after the cancel
        small.runs.fold_run_event(run_event)
    record = small.runs.get_run(request.run_id)
    assert record is not None
    assert record.status is RunStatus.CANCELLED
    assert small.extraction.claim_extraction(request.run_id, "paged").completed


def test_a_run_cancelled_after_its_start_together_is_not_extracted(extractor: Extractor, small: CatalogStores):
    request = RunRequested(definition="paged")
    assert extractor.starts([request]) == 1
    # Cancelled while it waits for its extraction (the runs before it on this replica being extracted).
    small.runs.fold_run_event(RunCancelled(run_id=request.run_id, definition="paged", requested_by="ops"))
    assert extractor.handle(request) == []
    sent = _sent(extractor)
    assert _started(sent) == {request.run_id: 1}
    assert not sent.batches()
    assert not _completed(sent)
    assert small.extraction.claim_extraction(request.run_id, "paged").completed


def _every_minute(catalog: CatalogStores) -> uuid.UUID:
    """A definition scheduled every minute (overlap ``skip``, the default): its id."""
    catalog.definitions.apply(
        ExportDefinition.model_validate(
            {"name": "minutely", "query": "few", "template": "t", "schedule": {"enabled": True, "cron": "* * * * *"}}
        )
    )
    return catalog.definitions.get_with_id(ExportDefinition, "minutely")[0]


def _scheduled(definition_id: uuid.UUID, at: dt.datetime) -> RunRequested:
    return RunRequested(
        definition="minutely",
        trigger=Trigger.SCHEDULE,
        requested_at=at - dt.timedelta(seconds=5),
        requested_by="scheduler",
        scheduled_for=at,
        definition_id=definition_id,
    )


def test_started_together_the_second_due_run_of_a_skip_definition_is_skipped_as_one_by_one(
    extractor: Extractor, small: CatalogStores
):
    # Two instants of an every-minute schedule both due when the extractor reaches them (it was behind, or down):
    # one by one, the second is judged with the first active, and skipped; started together, the same.
    ident = _every_minute(small)
    first, second = _scheduled(ident, INSTANT - dt.timedelta(minutes=1)), _scheduled(ident, INSTANT)
    assert extractor.starts([second, first]) == 1  # the earliest only
    assert extractor.starts([second]) == 0  # a later round: its first run started, not extracted yet
    sent = _sent(extractor)
    assert _started(sent) == {first.run_id: 1}
    extractor.handle(first)
    for run_event in sent.events():  # as the notifier folds them: the first run is dispatching, active
        small.runs.fold_run_event(run_event)
    extractor.handle(second)
    assert [e.run_id for e in sent.events() if isinstance(e, RunSkipped)] == [second.run_id]
    assert _started(sent) == {first.run_id: 1}


class _NeverAcknowledged:
    """A record's future the broker never answers (an outage): ``get`` waits its timeout, then gives up."""

    def get(self, timeout: float | None = None) -> None:
        threading.Event().wait(60.0 if timeout is None else min(timeout, 60.0))
        raise KafkaTimeoutError("no acknowledgement")


def test_the_catalog_is_not_locked_for_the_broker_s_whole_wait_while_a_start_together_awaits_its_ack(
    extractor: Extractor, small: CatalogStores
):
    # The broker is away: a start together's run.started is never acknowledged. Its claims' transaction (on SQLite,
    # the whole catalog's write lock) waits for it a bounded time (well within another writer's busy timeout), not
    # the delivery timeout: another catalog writer meanwhile (here the notifier folding a run event) proceeds.
    request = RunRequested(definition="few")
    outcome: list[BaseException | None] = []
    writers: list[threading.Thread] = []

    def write() -> None:
        try:
            small.runs.fold_run_event(RunStarted(run_id=uuid.uuid4(), definition="paged", trigger=Trigger.MANUAL))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome.append(exc)

    def broker_away(outgoing: list[Outgoing]) -> InFlight:
        writer = threading.Thread(target=write)
        writer.start()  # while the claims' transaction is open
        writers.append(writer)
        return InFlight([_NeverAcknowledged()], timeout_seconds=125.0)  # the delivery timeout + 5 s

    extractor.send = broker_away
    with pytest.raises(KafkaTimeoutError):
        extractor.starts([request])
    [writer] = writers
    writer.join(timeout=60.0)
    assert not writer.is_alive()
    assert outcome == [None], "another catalog writer was refused while the start waited for the broker"
    assert small.extraction.claim_extraction(request.run_id, "few").sync is None  # the claim rolled back


def test_runs_the_bulk_left_are_not_read_and_claimed_again_at_every_round(
    extractor: Extractor, small: CatalogStores, reader: MemberReader
):
    # Runs started by a replica before (it died, or the partitions moved): the next owner remembers nothing. Their
    # requests come back round after round until each is extracted; only the first round reads and claims them.
    burst = [RunRequested(definition="few") for _ in range(20)]
    assert extractor.starts(burst) == len(burst)
    other = _extractor(small, reader)
    missing = RunRequested(definition="no-such-definition")  # fails one by one: left to that path
    transactions = Transactions(small)
    assert transactions.of(lambda: other.starts([*burst, missing])) == 2  # their objects; the claims
    assert transactions.of(lambda: other.starts([*burst, missing])) == 0  # a later round: nothing again
    for request in burst[:5]:
        other.handle(request)  # extracted: forgotten, a redelivery is considered afresh
    assert transactions.of(lambda: other.starts(burst[:5])) == 2
    assert not _started(_sent(other)), "no second run.started"


def test_a_start_together_begins_no_further_chunk_once_the_extractor_is_stopping(
    extractor: Extractor, small: CatalogStores
):
    burst = [RunRequested(definition="few") for _ in range(5)]
    sent = _sent(extractor)
    extractor.starts.chunk = 2
    # A SIGTERM during the first chunk: the runs it started are extracted (or handed over), no more are started.
    assert extractor.starts(burst, stopping=lambda: bool(sent.records)) == 2
    assert set(_started(sent)) == {r.run_id for r in burst[:2]}
