"""A large run split into key ranges that several extractor replicas extract at once, on real Kafka, with
members read from SQLite and from a real PostgreSQL: every member once, batch identities unique per run,
the run's totals told once every range is done and folded exactly by the notifier's accounting, each
range resumed from its own checkpoint after a crash, and cancellation and failure seen by every range."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka.partitioner.default import murmur2
from sqlalchemy import text

from services.extractor.extraction import Extractor
from services.extractor.run_request_decoding import decode_run_request
from shared.application.run_events import record_run_event
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import RangeState
from shared.domain.runs import RunStatus
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    ExtractionCompleted,
    MemberBatch,
    RangeRequested,
    RunCancelled,
    RunFailed,
    RunRequested,
    RunStarted,
)
from shared.kafka import InFlight, Outgoing, ensure_topics, make_producer, produce
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

MEMBERS = 3_210
PARTITIONS = 3  # the test settings' topic partitions


@pytest.fixture
def stores(settings: CommonSettings) -> Iterator[CatalogStores]:
    catalog = CatalogStores.from_url(settings.catalog_url, migrate=True)
    yield catalog
    catalog.close()


@pytest.fixture
def member_store(database_url: str, stores: CatalogStores, settings: CommonSettings) -> str:
    engine = make_engine(database_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    ensure_topics(settings)
    stores.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    stores.definitions.apply(SavedQuery(name="all", sql="SELECT id, email, tier, updated_at FROM members"))
    stores.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=100))
    stores.definitions.apply(ExportDefinition(name="everyone", query="all", template="t"))
    stores.definitions.apply(
        ExportDefinition(name="changed", query="all", template="t", incremental={"watermark_column": "updated_at"})
    )
    return database_url


Replica = Callable[..., Extractor]


@pytest.fixture
def replica(member_store: str, stores: CatalogStores, settings: CommonSettings) -> Iterator[Replica]:
    """Makes extractor replicas: each its own reader and producer, all on the same catalog and topics."""
    made: list[tuple[Any, MemberReader]] = []

    def make(
        send_wrapper: Callable[[Callable[[list[Outgoing]], InFlight]], Any] | None = None,
        max_record_bytes: int = 900_000,
    ) -> Extractor:
        producer = make_producer(settings, f"replica-{len(made)}")
        reader = MemberReader.from_url(member_store)
        made.append((producer, reader))

        def send(out: list[Outgoing]) -> InFlight:
            return produce(producer, out)

        return Extractor(
            definitions=stores.definitions,
            runs=stores.runs,
            extraction=stores.extraction,
            reader=reader,
            topics=settings.topics,
            send=send_wrapper(send) if send_wrapper else send,
            page_size=300,
            max_record_bytes=max_record_bytes,
            range_members=500,
            run_request_partitions=lambda: PARTITIONS,
        )

    yield make
    for producer, reader in made:
        producer.close()
        reader.close()


def _range_requests(outgoing: list[Outgoing]) -> list[RangeRequested]:
    requests = [decode_run_request(o.value, []) for o in outgoing]
    assert all(isinstance(r, RangeRequested) for r in requests)
    return [r for r in requests if isinstance(r, RangeRequested)]


def _batches(settings: CommonSettings, done: Callable[[list[MemberBatch]], bool]) -> list[MemberBatch]:
    values = read_until(
        settings.kafka_bootstrap_servers,
        settings.topics.member_batches,
        lambda vs: done([MemberBatch.model_validate_json(v) for v in vs]),
    )
    return [MemberBatch.model_validate_json(v) for v in values]


def _events(settings: CommonSettings, done: Callable[[list[Any]], bool]) -> list[Any]:
    values = read_until(
        settings.kafka_bootstrap_servers,
        settings.topics.run_events,
        lambda vs: done([RUN_EVENT_ADAPTER.validate_json(v) for v in vs]),
    )
    return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]


def _fold_delivered(stores: CatalogStores, events: list[Any], batches: list[MemberBatch]) -> None:
    """Record the run's events as the notifier does, every batch delivered (redelivered ones included)."""
    for event in events:
        record_run_event(event, runs=stores.runs, watermarks=stores.extraction)
    for batch in batches:
        outcome = BatchOutcome(
            run_id=batch.run_id,
            definition=batch.definition,
            batch_index=batch.batch_index,
            delivered=len(batch.members),
            failed=0,
        )
        record_run_event(outcome, runs=stores.runs, watermarks=stores.extraction)


def test_ranges_extracted_by_two_replicas_at_once_give_every_member_once(
    replica: Replica, stores: CatalogStores, settings: CommonSettings
):
    first, second = replica(), replica()
    request = RunRequested(definition="everyone")
    outgoing = first.handle(request)

    ranges = _range_requests(outgoing)
    assert [r.range_index for r in ranges] == [0, 1, 2]  # 3,210 members, 500 at least a range, 3 partitions
    assert {o.topic for o in outgoing} == {settings.topics.run_requests}
    partitions = [(murmur2(o.key.encode()) & 0x7FFFFFFF) % PARTITIONS for o in outgoing]
    assert partitions == [0, 1, 2]  # a range a partition: a replica a partition
    assert [p.range_index for p in stores.extraction.run_ranges(request.run_id)] == [0, 1, 2]

    # Two replicas, each its share of the ranges, at the same time.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: job[0].handle(job[1]), [(first, ranges[0]), (second, ranges[1])]))
    assert results == [[], []]
    assert first.handle(ranges[2]) == []

    batches = _batches(settings, lambda bs: sum(len(b.members) for b in bs) >= MEMBERS)
    ids = [m["id"] for b in batches for m in b.members]
    assert sorted(ids) == list(range(1, MEMBERS + 1))
    indexes = sorted(b.batch_index for b in batches)
    assert len(set(indexes)) == len(indexes)
    by_range = [[i for i in indexes if i // 1_000 == r] for r in range(3)]
    assert [len(r) for r in by_range] == [11, 11, 11]  # 1,070 members a range, 100 a batch
    assert [r[0] for r in by_range] == [0, 1_000, 2_000]  # each range's own, readable, index space

    events = _events(settings, lambda es: any(isinstance(e, ExtractionCompleted) for e in es))
    assert [type(e) for e in events] == [RunStarted, ExtractionCompleted]
    assert (events[1].members, events[1].batches) == (MEMBERS, 33)

    _fold_delivered(stores, events, batches)
    record = stores.runs.get_run(request.run_id)
    assert record is not None
    assert (record.status, record.extracted, record.delivered, record.batches_done) == (
        RunStatus.SUCCEEDED,
        MEMBERS,
        MEMBERS,
        33,
    )
    # Every request handled again (redelivered): nothing is published twice.
    assert first.handle(request) == []
    assert second.handle(ranges[0]) == []
    assert stores.extraction.claim_extraction(request.run_id, "everyone").completed


def test_a_replica_that_dies_mid_range_is_resumed_from_the_ranges_checkpoint(
    replica: Replica, stores: CatalogStores, settings: CommonSettings
):
    class Killed(BaseException):
        """The process dies: nothing of the extractor's handling runs after it."""

    sends = 0

    def dies_on_the_third_page(send: Callable[[list[Outgoing]], InFlight]) -> Callable[[list[Outgoing]], InFlight]:
        def sending(out: list[Outgoing]) -> InFlight:
            nonlocal sends
            if out and out[0].topic == settings.topics.member_batches:
                sends += 1
                if sends == 3:
                    raise Killed
            return send(out)

        return sending

    request = RunRequested(definition="everyone")
    ranges = _range_requests(replica().handle(request))
    doomed = replica(dies_on_the_third_page)
    with pytest.raises(Killed):
        doomed.handle(ranges[1])
    at_crash = stores.extraction.range_checkpoint(request.run_id, 1)
    assert at_crash is not None
    # The second page acknowledged and checkpointed before the third was sent (with the third's end written ahead).
    assert (at_crash.state, at_crash.members, at_crash.next_batch_index) == (RangeState.EXTRACTING, 600, 1_006)
    assert at_crash.sending is not None
    assert at_crash.sending.next_batch_index == 1_009

    survivor = replica()  # the range's record is redelivered to another replica
    for task in (ranges[0], ranges[1], ranges[2]):
        assert survivor.handle(task) == []

    batches = _batches(settings, lambda bs: len({b.batch_index for b in bs}) >= 33)
    per_index: dict[int, list[int]] = {}
    for batch in batches:  # a batch published twice is the same batch: same members
        ids = [m["id"] for m in batch.members]
        assert per_index.setdefault(batch.batch_index, ids) == ids
    assert sorted(i for ids in per_index.values() for i in ids) == list(range(1, MEMBERS + 1))
    assert len(batches) - len(per_index) <= 2 * 3  # at most the two pages in flight, published again
    [completed] = [e for e in _events(settings, lambda es: len(es) >= 2) if isinstance(e, ExtractionCompleted)]
    assert (completed.members, completed.batches) == (MEMBERS, 33)


def test_ranges_handled_after_their_definition_switched_template_send_with_the_runs_first(
    replica: Replica, stores: CatalogStores, settings: CommonSettings
):
    extractor = replica()
    request = RunRequested(definition="everyone")
    ranges = _range_requests(extractor.handle(request))
    stores.definitions.apply(HttpTemplate(name="t-new", query="all", profile="p", batch_size=100))
    stores.definitions.apply(ExportDefinition(name="everyone", query="all", template="t-new"))
    for task in ranges:
        assert extractor.handle(task) == []
    batches = _batches(settings, lambda bs: sum(len(b.members) for b in bs) >= MEMBERS)
    # Before: every range read its definition's template as it was then, each record naming t-new.
    assert {b.template for b in batches} == {"t"}
    assert sorted(m["id"] for b in batches for m in b.members) == list(range(1, MEMBERS + 1))


def test_a_cancelled_run_stops_every_range(replica: Replica, stores: CatalogStores, settings: CommonSettings):
    first = replica()
    request = RunRequested(definition="everyone")
    ranges = _range_requests(first.handle(request))
    assert first.handle(ranges[0]) == []
    stores.runs.fold_run_event(RunCancelled(run_id=request.run_id, definition="everyone", requested_by="ops"))
    assert first.handle(ranges[1]) == []
    assert first.handle(ranges[2]) == []
    states = [r.state for r in stores.extraction.run_ranges(request.run_id)]
    assert states == [RangeState.EXTRACTED, RangeState.STOPPED, RangeState.STOPPED]
    batches = _batches(settings, lambda bs: len(bs) >= 11)
    assert {b.batch_index // 1_000 for b in batches} == {0}  # nothing of the later ranges
    events = _events(settings, lambda es: len(es) >= 1)
    assert not any(isinstance(e, ExtractionCompleted) for e in events)


def test_a_range_that_fails_fails_the_run_and_the_other_ranges_stop(
    replica: Replica, stores: CatalogStores, settings: CommonSettings, member_store: str
):
    first = replica(max_record_bytes=400)  # a record holds a member of the demo's, not one of 200 characters more
    request = RunRequested(definition="everyone")
    ranges = _range_requests(first.handle(request))
    engine = make_engine(member_store)
    with engine.begin() as connection:  # a member too large for a record, in the second range
        connection.execute(text("UPDATE members SET email = :big WHERE id = 1500"), {"big": "x" * 200})
    engine.dispose()
    [failed] = first.handle(ranges[1])
    event = RUN_EVENT_ADAPTER.validate_json(failed.value)
    assert isinstance(event, RunFailed)
    assert event.reason.startswith("member id=1500 encodes to")
    assert first.handle(ranges[0]) == []  # the run is over: the other ranges stop before a page
    assert first.handle(ranges[2]) == []
    assert [r.state for r in stores.extraction.run_ranges(request.run_id)] == [RangeState.STOPPED] * 3
    assert stores.extraction.claim_extraction(request.run_id, "everyone").completed


def test_a_redelivered_run_request_asks_for_the_same_ranges_again(replica: Replica, stores: CatalogStores):
    extractor = replica()
    request = RunRequested(definition="everyone")
    first = extractor.handle(request)
    again = extractor.handle(request)
    assert [(o.topic, o.key) for o in again] == [(o.topic, o.key) for o in first]  # same ranges, same partitions
    assert _range_requests(again) == [
        r.model_copy(update={"at": a.at}) for r, a in zip(_range_requests(first), _range_requests(again), strict=True)
    ]
    ranges = _range_requests(first)
    extractor.handle(ranges[0])
    assert [o.key for o in extractor.handle(request)] == [o.key for o in first[1:]]  # only those still to do


def test_a_replica_alone_splits_nothing(replica: Replica, stores: CatalogStores):
    alone = replica()
    alone.other_replicas = lambda: False  # it holds every partition of the run-requests topic
    request = RunRequested(definition="everyone")
    assert alone.handle(request) == []
    assert stores.extraction.run_ranges(request.run_id) == []
    assert stores.extraction.claim_extraction(request.run_id, "everyone").members == MEMBERS


def test_a_small_run_is_not_split(replica: Replica, stores: CatalogStores, settings: CommonSettings):
    stores.definitions.apply(SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 999"))
    stores.definitions.apply(HttpTemplate(name="t-few", query="few", profile="p", batch_size=100))
    stores.definitions.apply(ExportDefinition(name="a-few", query="few", template="t-few"))
    request = RunRequested(definition="a-few")
    assert replica().handle(request) == []  # 999 members: under two ranges of 500
    [_, completed] = _events(settings, lambda es: len(es) >= 2)
    assert (completed.members, completed.batches) == (999, 10)
    assert stores.extraction.run_ranges(request.run_id) == []


def test_a_split_incremental_run_reads_only_the_changed_members(
    replica: Replica, stores: CatalogStores, settings: CommonSettings, member_store: str
):
    extractor = replica()
    first = RunRequested(definition="changed")
    for task in _range_requests(extractor.handle(first)):
        extractor.handle(task)
    batches = _batches(settings, lambda bs: sum(len(b.members) for b in bs) >= MEMBERS)
    _fold_delivered(stores, _events(settings, lambda es: len(es) >= 2), batches)
    assert stores.extraction.watermark("changed") is not None  # the first run succeeded

    changed = [7, 1_100, 1_101, 2_500, 3_000]
    engine = make_engine(member_store)
    with engine.begin() as connection:
        connection.execute(
            text(f"UPDATE members SET updated_at = :later WHERE id IN ({', '.join(map(str, changed))})"),
            {"later": datetime(2030, 1, 1, tzinfo=UTC)},
        )
    engine.dispose()
    small = replica()
    small.range_members = 1  # five members: split all the same
    second = RunRequested(definition="changed")
    tasks = _range_requests(small.handle(second))
    assert len(tasks) == PARTITIONS
    for task in tasks:
        small.handle(task)
    later = [
        b
        for b in _batches(settings, lambda bs: any(b.run_id == second.run_id for b in bs) and len(bs) >= 36)
        if b.run_id == second.run_id
    ]
    assert sorted(m["id"] for b in later for m in b.members) == changed
    events = _events(
        settings, lambda es: any(isinstance(e, ExtractionCompleted) and e.run_id == second.run_id for e in es)
    )
    [completed] = [e for e in events if isinstance(e, ExtractionCompleted) and e.run_id == second.run_id]
    assert (completed.members, completed.batches) == (len(changed), 3)
