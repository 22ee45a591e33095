"""A small run's catalog work in the extractor: how many catalog transactions each kind of start costs (counted
on the catalog's engine, SQLite and PostgreSQL), and what folding the last page's checkpoint into the
completion, and checking for a cancel before each page but the first, mean for a crash and a late cancel.

The records the extractor sends are acknowledged at once (no Kafka): what is counted is the catalog's work."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
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
    RunCancelled,
    RunRequested,
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


@pytest.fixture
def extractor(small: CatalogStores, members_url: str) -> Iterator[Extractor]:
    reader = MemberReader.from_url(members_url)
    yield Extractor(
        definitions=small.definitions,
        runs=small.runs,
        extraction=small.extraction,
        reader=reader,
        topics=TOPICS,
        send=Sent(),
        page_size=100,
        record_members=10,
        retries=small.retries,
        snapshots=SqlChangeSnapshots(small.database),
        start_times=StartTimes(max_wait=dt.timedelta(seconds=60), now=lambda: INSTANT),
    )
    reader.close()


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
    # Three pages: a status read and a checkpoint save before each page but the first; the last page's
    # checkpoint is the completion's.
    transactions = Transactions(small)
    assert transactions.of(lambda: extractor.handle(RunRequested(definition="paged"))) == 3 + 2 * 2
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
    # The read and the claim, the snapshot's own work (see change_extraction.py), the completion (fifteen before).
    assert count == 11
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
