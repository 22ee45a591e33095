"""The extractor on real Kafka, reading members from SQLite and from a real PostgreSQL."""

import uuid
from collections.abc import Iterator

import pytest

from services.extractor.extraction import Extractor
from shared.catalog import Catalog, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, ExtractionCompleted, MemberBatch, RunFailed, RunRequested, RunStarted
from shared.kafka import ensure_topics, make_producer, produce_and_wait
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

MEMBERS = 3_210


@pytest.fixture
def extractor(settings: CommonSettings, database_url: str) -> Iterator[Extractor]:
    engine = make_engine(database_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    ensure_topics(settings)
    catalog = Catalog.from_url(settings.catalog_url)
    catalog.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.apply(SavedQuery(name="all", sql="SELECT id, email FROM members"))
    catalog.apply(SavedQuery(name="broken", sql="SELECT id FROM missing_table"))
    catalog.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=100))
    catalog.apply(HttpTemplate(name="t-broken", query="broken", profile="p"))
    catalog.apply(ExportDefinition(name="export-all", query="all", template="t", priority="high"))
    catalog.apply(ExportDefinition(name="export-broken", query="broken", template="t-broken"))
    producer = make_producer(settings, "test-extractor")
    reader = MemberReader.from_url(database_url)
    yield Extractor(
        catalog=catalog,
        reader=reader,
        topics=settings.topics,
        publish=lambda out: produce_and_wait(producer, out),
        page_size=1_000,
    )
    producer.close()
    reader.close()
    catalog.close()


def _run_events(settings: CommonSettings, count: int):
    values = read_until(settings.kafka_bootstrap_servers, settings.topics.run_events, lambda vs: len(vs) >= count)
    return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]


def test_every_member_is_published_once_in_batches(extractor: Extractor, settings: CommonSettings):
    request = RunRequested(definition="export-all")
    assert extractor.handle(request) == []
    batches = [
        MemberBatch.model_validate_json(v)
        for v in read_until(settings.kafka_bootstrap_servers, settings.topics.member_batches, lambda vs: len(vs) >= 33)
    ]
    ids = [m["id"] for b in batches for m in b.members]
    assert sorted(ids) == list(range(1, MEMBERS + 1))
    assert sorted(b.batch_index for b in batches) == list(range(33))
    assert all(len(b.members) == 100 for b in batches if b.batch_index < 32)
    assert {b.priority.value for b in batches} == {"high"}
    events = _run_events(settings, 2)
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[1], ExtractionCompleted)
    assert (events[1].members, events[1].batches) == (MEMBERS, 33)


def test_a_repeated_run_request_is_not_extracted_twice(extractor: Extractor, settings: CommonSettings):
    request = RunRequested(run_id=uuid.uuid4(), definition="export-all")
    extractor.handle(request)
    extractor.handle(request)
    events = _run_events(settings, 2)
    assert [type(e).__name__ for e in events] == ["RunStarted", "ExtractionCompleted"]
    assert extractor.catalog.claim_extraction(request.run_id, "export-all").completed


def test_an_unknown_definition_fails_the_run_with_the_reason(extractor: Extractor):
    [outgoing] = extractor.handle(RunRequested(definition="no-such-export"))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason == "unknown definition: ExportDefinition 'no-such-export' does not exist"


def test_a_query_error_fails_the_run_with_the_reason(extractor: Extractor, settings: CommonSettings):
    [outgoing] = extractor.handle(RunRequested(definition="export-broken"))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason.startswith("query 'broken' failed:")
    assert "missing_table" in failed.reason


def test_a_run_resumes_from_its_checkpoint_with_the_same_batch_identities(
    extractor: Extractor, settings: CommonSettings
):
    run_id = uuid.uuid4()
    checkpoint = extractor.catalog.claim_extraction(run_id, "export-all")
    from shared.catalog.repository import Checkpoint

    # As if a crash happened after the first two pages (20 batches, keys 1..2000) were published.
    extractor.catalog.save_checkpoint(Checkpoint(checkpoint.run_id, 2000, 20, 2000, completed=False))
    extractor.handle(RunRequested(run_id=run_id, definition="export-all"))
    batches = [
        MemberBatch.model_validate_json(v)
        for v in read_until(settings.kafka_bootstrap_servers, settings.topics.member_batches, lambda vs: len(vs) >= 13)
    ]
    assert sorted(b.batch_index for b in batches) == list(range(20, 33))
    assert sorted(m["id"] for b in batches for m in b.members) == list(range(2001, MEMBERS + 1))
    completed = [e for e in _run_events(settings, 2) if isinstance(e, ExtractionCompleted)]
    assert (completed[0].members, completed[0].batches) == (MEMBERS, 33)
