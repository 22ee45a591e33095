"""The extractor on real Kafka, reading members from SQLite and from a real PostgreSQL."""

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY
from sqlalchemy import text

from services.extractor.extraction import Extractor
from shared.application.run_events import record_run_event
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import Checkpoint, RunSync
from shared.domain.sync_mode import SyncMode
from shared.events import (
    REASON_MAX_CHARS,
    RUN_EVENT_ADAPTER,
    AnyRunEvent,
    BatchOutcome,
    ExtractionCompleted,
    MemberBatch,
    RunCancelled,
    RunFailed,
    RunRequested,
    RunStarted,
)
from shared.kafka import InFlight, Outgoing, ensure_topics, make_producer, produce
from shared.querystore import MemberReader, QueryError
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

MEMBERS = 3_210


@pytest.fixture
def extractor_stores(
    settings: CommonSettings, migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[CatalogStores]:
    """The extractor's catalog (SQLite; the member store is the parametrized database)."""
    catalog = migrated_catalog(settings.catalog_url)
    yield catalog
    catalog.close()


@pytest.fixture
def extractor(settings: CommonSettings, database_url: str, extractor_stores: CatalogStores) -> Iterator[Extractor]:
    engine = make_engine(database_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    ensure_topics(settings)
    catalog = extractor_stores
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="all", sql="SELECT id, email FROM members"))
    catalog.definitions.apply(SavedQuery(name="broken", sql="SELECT id FROM missing_table"))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=100))
    catalog.definitions.apply(HttpTemplate(name="t-broken", query="broken", profile="p"))
    catalog.definitions.apply(ExportDefinition(name="export-all", query="all", template="t", priority="high"))
    catalog.definitions.apply(ExportDefinition(name="export-broken", query="broken", template="t-broken"))
    catalog.definitions.apply(
        SavedQuery(
            name="by-tier",
            sql="SELECT id, tier, points FROM members WHERE tier = :tier AND points >= :min_points",
            parameters={"tier": {"type": "string", "required": True}, "min_points": {"type": "integer", "default": 0}},
        )
    )
    catalog.definitions.apply(HttpTemplate(name="t-tier", query="by-tier", profile="p", batch_size=100))
    catalog.definitions.apply(
        ExportDefinition(name="export-tier", query="by-tier", template="t-tier", parameters={"tier": "gold"})
    )
    catalog.definitions.apply(SavedQuery(name="changed", sql="SELECT id, updated_at FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t-changed", query="changed", profile="p", batch_size=100))
    catalog.definitions.apply(
        ExportDefinition(
            name="export-changed", query="changed", template="t-changed", incremental={"watermark_column": "updated_at"}
        )
    )
    # Counts to a billion before it returns nothing: slow on every engine.
    catalog.definitions.apply(
        SavedQuery(
            name="slow",
            sql="WITH RECURSIVE c(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM c WHERE id < 1000000000) "
            "SELECT id FROM c WHERE id < 0",
            timeout_seconds=1,
        )
    )
    catalog.definitions.apply(HttpTemplate(name="t-slow", query="slow", profile="p"))
    catalog.definitions.apply(ExportDefinition(name="export-slow", query="slow", template="t-slow"))
    producer = make_producer(settings, "test-extractor")
    reader = MemberReader.from_url(database_url)
    yield Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=reader,
        topics=settings.topics,
        send=lambda out: produce(producer, out),
        page_size=1_000,
    )
    producer.close()
    reader.close()


def _members(settings: CommonSettings, count: int) -> list[dict[str, Any]]:
    """Every member published so far, once ``count`` have been read."""
    values = read_until(
        settings.kafka_bootstrap_servers,
        settings.topics.member_batches,
        lambda vs: sum(len(MemberBatch.model_validate_json(v).members) for v in vs) >= count,
    )
    return [m for v in values for m in MemberBatch.model_validate_json(v).members]


def _member_rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def _run_events(settings: CommonSettings, count: int):
    values = read_until(settings.kafka_bootstrap_servers, settings.topics.run_events, lambda vs: len(vs) >= count)
    return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]


def test_every_member_is_published_once_in_batches(extractor: Extractor, settings: CommonSettings):
    request = RunRequested(definition="export-all")
    assert extractor.handle(request) == []
    batches = [
        MemberBatch.model_validate_json(v)
        for v in read_until(
            settings.kafka_bootstrap_servers, settings.topics.member_batches_for("high"), lambda vs: len(vs) >= 33
        )
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
    assert extractor.extraction.claim_extraction(request.run_id, "export-all").completed


def _runs_failed(definition: str, reason: str) -> float:
    labels = {"definition": definition, "reason": reason}
    return REGISTRY.get_sample_value("member_export_extractor_runs_failed_total", labels) or 0.0


def test_an_unknown_definition_fails_the_run_with_the_reason(extractor: Extractor):
    before = _runs_failed("(unknown)", "unknown_definition")
    [outgoing] = extractor.handle(RunRequested(definition="no-such-export"))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason == "unknown definition: ExportDefinition 'no-such-export' does not exist"
    # Counted without the name the request gave: only catalog names become label values.
    assert _runs_failed("(unknown)", "unknown_definition") == before + 1
    assert _runs_failed("no-such-export", "unknown_definition") == 0


def test_a_query_error_fails_the_run_with_the_reason(extractor: Extractor, settings: CommonSettings):
    before = _runs_failed("export-broken", "query_error")
    [outgoing] = extractor.handle(RunRequested(definition="export-broken"))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason.startswith("query 'broken' failed:")
    assert "missing_table" in failed.reason
    assert _runs_failed("export-broken", "query_error") == before + 1


def test_a_run_failing_with_a_very_long_reason_logs_and_publishes_it_cut(
    extractor: Extractor, monkeypatch: pytest.MonkeyPatch
):
    # A member store's error text has no length limit: the run's event and its log line both carry it cut.
    long = "query 'all' failed: " + "x" * (3 * REASON_MAX_CHARS)

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise QueryError(long)

    monkeypatch.setattr(extractor.reader, "member_pages", failing)
    request = RunRequested(definition="export-all")
    with structlog.testing.capture_logs() as logs:
        outgoing = extractor.handle(request)
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing[-1].value)
    assert isinstance(failed, RunFailed)
    assert failed.reason.startswith("query 'all' failed: xxx")
    assert len(failed.reason) <= REASON_MAX_CHARS
    [logged] = [entry for entry in logs if entry["event"] == "run failed"]
    assert logged["run_id"] == str(request.run_id)
    assert logged["reason"] == failed.reason


def test_a_run_resumes_from_its_checkpoint_with_the_same_batch_identities(
    extractor: Extractor, settings: CommonSettings
):
    run_id = uuid.uuid4()
    checkpoint = extractor.extraction.claim_extraction(run_id, "export-all")
    from shared.domain.checkpoints import Checkpoint

    # As if a crash happened after the first two pages (20 batches, keys 1..2000) were published.
    extractor.extraction.save_checkpoint(Checkpoint(checkpoint.run_id, 2000, 20, 2000, completed=False))
    extractor.handle(RunRequested(run_id=run_id, definition="export-all"))
    batches = [
        MemberBatch.model_validate_json(v)
        for v in read_until(
            settings.kafka_bootstrap_servers, settings.topics.member_batches_for("high"), lambda vs: len(vs) >= 13
        )
    ]
    assert sorted(b.batch_index for b in batches) == list(range(20, 33))
    assert sorted(m["id"] for b in batches for m in b.members) == list(range(2001, MEMBERS + 1))
    completed = [e for e in _run_events(settings, 2) if isinstance(e, ExtractionCompleted)]
    assert (completed[0].members, completed[0].batches) == (MEMBERS, 33)


def test_a_resumed_run_keeps_the_sync_mode_it_started_with(
    extractor: Extractor, extractor_stores: CatalogStores, settings: CommonSettings
):
    run_id = uuid.uuid4()
    extractor.extraction.claim_extraction(run_id, "export-all")
    # A full run crashed after two pages; its definition switched to change mode since.
    started = Checkpoint(run_id, 2000, 20, 2000, completed=False, sync=RunSync(SyncMode.FULL, full_scope=True))
    extractor.extraction.save_checkpoint(started)
    extractor_stores.definitions.apply(
        ExportDefinition(name="export-all", query="all", template="t", priority="high", sync={"mode": "changes"})
    )
    extractor.handle(RunRequested(run_id=run_id, definition="export-all"))
    completed = [e for e in _run_events(settings, 2) if isinstance(e, (ExtractionCompleted, RunFailed))]
    assert isinstance(completed[0], ExtractionCompleted), completed[0]
    assert (completed[0].members, completed[0].batches, completed[0].changes) == (MEMBERS, 33, None)
    assert extractor.extraction.claim_extraction(run_id, "export-all").sync == started.sync


def test_a_run_request_gives_the_query_its_parameters(
    extractor: Extractor, settings: CommonSettings, database_url: str
):
    expected = _member_rows(database_url, "SELECT id FROM members WHERE tier = 'silver' AND points >= 100000")
    extractor.handle(RunRequested(definition="export-tier", parameters={"tier": "silver", "min_points": "100000"}))
    members = _members(settings, len(expected))
    assert sorted(m["id"] for m in members) == sorted(r[0] for r in expected)
    assert {m["tier"] for m in members} == {"silver"}


def test_the_definition_gives_parameters_that_a_request_does_not(
    extractor: Extractor, settings: CommonSettings, database_url: str
):
    expected = _member_rows(database_url, "SELECT id FROM members WHERE tier = 'gold'")
    extractor.handle(RunRequested(definition="export-tier"))
    assert sorted(m["id"] for m in _members(settings, len(expected))) == sorted(r[0] for r in expected)


def test_an_invalid_parameter_fails_the_run_naming_it(extractor: Extractor):
    [outgoing] = extractor.handle(RunRequested(definition="export-tier", parameters={"min_points": "many"}))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason.startswith("invalid parameters: parameter 'min_points': expected integer")


def test_a_query_past_its_timeout_is_cancelled_and_fails_the_run(extractor: Extractor):
    [outgoing] = extractor.handle(RunRequested(definition="export-slow"))
    failed = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(failed, RunFailed)
    assert failed.reason == "query 'slow' timed out after 1 s"


def _succeed(catalog: CatalogStores, run_id: uuid.UUID, batches: int, members: int) -> None:
    """Record the events of a run whose every batch was delivered (as the notifier does)."""
    events: list[AnyRunEvent] = [
        ExtractionCompleted(run_id=run_id, definition="export-changed", members=members, batches=batches)
    ]
    events += [
        BatchOutcome(run_id=run_id, definition="export-changed", batch_index=index, delivered=1, failed=0)
        for index in range(batches)
    ]
    for event in events:
        record_run_event(event, runs=catalog.runs, watermarks=catalog.extraction)


def test_an_incremental_run_exports_only_members_changed_since_the_last_successful_run(
    extractor: Extractor, settings: CommonSettings, database_url: str, extractor_stores: CatalogStores
):
    catalog = extractor_stores
    first = RunRequested(definition="export-changed")
    extractor.handle(first)
    assert len(_members(settings, MEMBERS)) == MEMBERS
    assert catalog.extraction.watermark("export-changed") is None  # not until the run succeeds
    _succeed(catalog, first.run_id, batches=33, members=MEMBERS)
    assert catalog.extraction.watermark("export-changed") is not None

    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE members SET updated_at = :later WHERE id IN (7, 70, 700)"),
            {"later": datetime(2030, 1, 1, tzinfo=UTC)},
        )
    engine.dispose()
    failed_run = RunRequested(definition="export-changed")
    extractor.handle(failed_run)  # extracted, but never succeeds: the watermark must not move
    second = RunRequested(definition="export-changed")
    extractor.handle(second)
    members = _members(settings, MEMBERS + 6)
    by_run: dict[uuid.UUID, list[int]] = {}
    for value in read_until(settings.kafka_bootstrap_servers, settings.topics.member_batches, lambda vs: len(vs) >= 35):
        batch = MemberBatch.model_validate_json(value)
        by_run.setdefault(batch.run_id, []).extend(m["id"] for m in batch.members)
    assert sorted(by_run[failed_run.run_id]) == [7, 70, 700]
    assert sorted(by_run[second.run_id]) == [7, 70, 700]
    assert len(members) == MEMBERS + 6

    _succeed(catalog, second.run_id, batches=1, members=3)
    third = RunRequested(definition="export-changed")
    extractor.handle(third)
    completed = [e for e in _run_events(settings, 8) if isinstance(e, ExtractionCompleted) and e.run_id == third.run_id]
    assert (completed[0].members, completed[0].batches) == (0, 0)


def test_a_cancelled_run_is_not_extracted(
    extractor: Extractor, settings: CommonSettings, extractor_stores: CatalogStores
):
    cancelled = RunRequested(run_id=uuid.uuid4(), definition="export-all")
    extractor_stores.runs.fold_run_event(
        RunCancelled(run_id=cancelled.run_id, definition="export-all", requested_by="ops")
    )
    assert extractor.handle(cancelled) == []
    assert extractor.extraction.claim_extraction(cancelled.run_id, "export-all").completed  # a redelivery stays idle
    later = RunRequested(definition="export-all")
    extractor.handle(later)
    events = _run_events(settings, 2)
    assert {e.run_id for e in events} == {later.run_id}  # nothing of the cancelled run was published


class Journal:
    """The extractor's sends, and its waits for their acknowledgement, in order: ``send <what>``,
    ``acknowledged <what>`` (a run event by its type, a member batch as ``batch``)."""

    def __init__(self, send: Callable[[list[Outgoing]], InFlight], settings: CommonSettings) -> None:
        self._send, self.run_events = send, settings.topics.run_events
        self.entries: list[str] = []

    def __call__(self, outgoing: list[Outgoing]) -> InFlight:
        kinds = {
            type(RUN_EVENT_ADAPTER.validate_json(o.value)).__name__ if o.topic == self.run_events else "batch"
            for o in outgoing
        }
        what = ",".join(sorted(kinds))
        self.entries.append(f"send {what}")
        return _Journaled(self._send(outgoing), lambda: self.entries.append(f"acknowledged {what}"))


class _Journaled(InFlight):
    def __init__(self, sent: InFlight, waited: Callable[[], None]) -> None:
        super().__init__([], 1.0)
        self._sent, self._waited = sent, waited

    def wait(self, timeout_seconds: float | None = None) -> None:
        self._sent.wait(timeout_seconds)
        self._waited()


def test_run_started_is_acknowledged_with_the_run_s_first_records_and_before_its_outcome(
    extractor: Extractor, settings: CommonSettings
):
    journal = Journal(extractor.send, settings)
    extractor.send = journal
    extractor.handle(RunRequested(definition="export-all"))
    entries = journal.entries
    # No wait of its own (a broker round trip): the run's first page is sent before it is waited for.
    assert entries[:2] == ["send RunStarted", "send batch"]
    assert entries.index("acknowledged RunStarted") < entries.index("send ExtractionCompleted")

    journal.entries.clear()
    [outgoing] = extractor.handle(RunRequested(definition="export-broken"))  # fails once started
    assert isinstance(RUN_EVENT_ADAPTER.validate_json(outgoing.value), RunFailed)
    assert journal.entries == ["send RunStarted", "acknowledged RunStarted"]  # before the failure is published
