"""The extractor as a real process on real Kafka: killed mid-run, and fed CloudEvents.

200,000 members on SQLite and on real PostgreSQL: every member must reach the member-batch topic,
none lost, after a ``kill -9`` at about half-way and a restart; duplicates only as whole batches
with the same identity (which the dispatcher and the notifier deduplicate).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kafka import KafkaProducer

from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from services.extractor.run_request_decoding import CLOUDEVENT_RUN_NAMESPACE
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import (
    RUN_EVENT_ADAPTER,
    RUN_REQUESTED_CLOUDEVENT_TYPE,
    DeadLetter,
    ExtractionCompleted,
    RunRequested,
    RunStarted,
)
from shared.querystore.demo_data import create_demo_members
from shared.topics import Topics
from tests.kafka_helpers import (
    produce,
    produce_with_null_headers,
    read_records_to_end,
    read_to_end,
    read_until,
    service_env,
)

pytestmark = pytest.mark.integration

MEMBERS = 200_000


@dataclass
class RunningExtractor:
    pipeline: LocalPipeline
    catalog: CatalogStores
    bootstrap: str
    topics: Topics

    def request(self, definition: str) -> uuid.UUID:
        request = RunRequested(definition=definition)
        produce(self.bootstrap, self.topics.run_requests, [(str(request.run_id), request.to_bytes())])
        return request.run_id

    def run_events(self, done: Callable[[list[Any]], bool], timeout: float = 120) -> list[Any]:
        values = read_until(
            self.bootstrap,
            self.topics.run_events,
            lambda vs: done([RUN_EVENT_ADAPTER.validate_json(v) for v in vs]),
            timeout=timeout,
        )
        return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def extractor_process(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory, postgres_database_factory
) -> Iterator[RunningExtractor]:
    workdir: Path = tmp_path_factory.mktemp(f"extractor-{request.param}")
    store_url = f"sqlite:///{workdir / 'members.db'}" if request.param == "sqlite" else postgres_database_factory()
    engine = make_engine(store_url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    catalog_url = f"sqlite:///{workdir / 'catalog.db'}"
    catalog = CatalogStores.from_url(catalog_url, migrate=True)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="all", sql="SELECT id, email, tier, points, updated_at FROM members"))
    catalog.definitions.apply(SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 250"))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=500))
    catalog.definitions.apply(HttpTemplate(name="t-few", query="few", profile="p", batch_size=100))
    catalog.definitions.apply(ExportDefinition(name="everyone", query="all", template="t"))
    catalog.definitions.apply(ExportDefinition(name="a-few", query="few", template="t-few"))
    prefix = f"x{uuid.uuid4().hex[:10]}."
    pipeline = LocalPipeline(
        env=service_env(kafka_bootstrap, prefix, catalog_url, store_url)
        | {
            "EXPORT_EXTRACTOR_PAGE_SIZE": "1000",
            # The least the product and the broker allow: an extractor restarted after a kill waits for the killed
            # one's session to end before its group gives it the partitions (6 s instead of the default 10 s).
            "EXPORT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        },
        log_dir=workdir / "logs",
        services=("extractor",),
    ).start()
    yield RunningExtractor(pipeline, catalog, kafka_bootstrap, Topics(prefix))
    pipeline.stop()
    catalog.close()


def test_a_run_killed_half_way_resumes_and_loses_no_member(extractor_process: RunningExtractor):
    running = extractor_process
    run_id = running.request("everyone")

    def progress() -> int:
        checkpoint = running.catalog.extraction.claim_extraction(run_id, "everyone")
        return checkpoint.members

    wait_until(lambda: progress() >= MEMBERS // 2, timeout=180, interval=0.02, what="half the members extracted")
    running.pipeline.kill("extractor")
    at_kill = running.catalog.extraction.claim_extraction(run_id, "everyone")
    assert not at_kill.completed, "the run finished before the kill: the test proves nothing"
    running.pipeline.start_service("extractor")

    [completed] = [
        e
        for e in running.run_events(lambda es: any(isinstance(e, ExtractionCompleted) for e in es), timeout=240)
        if isinstance(e, ExtractionCompleted)
    ]
    assert (completed.members, completed.batches) == (MEMBERS, MEMBERS // 500)

    batches: dict[int, list[int]] = {}
    records = 0

    def read_all(values: list[bytes]) -> bool:
        nonlocal records
        for value in values[records:]:
            batch = orjson.loads(value)
            ids = [m["id"] for m in batch["members"]]
            # A batch published twice (before and after the kill) is the same batch: same members.
            assert batches.setdefault(batch["batch_index"], ids) == ids
        records = len(values)
        return len(batches) == completed.batches

    read_until(running.bootstrap, running.topics.member_batches, read_all, timeout=180)
    every_id = sorted(i for ids in batches.values() for i in ids)
    assert every_id == list(range(1, MEMBERS + 1))
    assert records - len(batches) <= 2 * 1000 // 500, "more than the in-flight pages were published twice"


#: The ``time`` of the CloudEvents sent: the run's ``requested_at``.
EVENT_TIME = datetime(2026, 11, 30, 8, 15, 42, tzinfo=UTC)


def _cloudevent(**data: Any) -> CloudEvent:
    return CloudEvent(
        attributes={
            "type": RUN_REQUESTED_CLOUDEVENT_TYPE,
            "source": "/crm/campaigns",
            "id": uuid.uuid4().hex,
            "time": EVENT_TIME,
            "datacontenttype": "application/json",
        },
        data=data,
    )


def test_runs_requested_as_cloudevents_happen_in_both_modes(extractor_process: RunningExtractor):
    running = extractor_process
    structured, binary = _cloudevent(definition="a-few"), _cloudevent(definition="a-few")
    wrong_type = CloudEvent(
        attributes={"type": "com.example.other", "source": "/crm/campaigns", "id": "1"}, data={"definition": "a-few"}
    )
    producer = KafkaProducer(bootstrap_servers=running.bootstrap, acks="all")
    for message in (
        to_structured(structured, JSONFormat()),
        to_binary(binary, JSONFormat()),
        to_binary(wrong_type, JSONFormat()),
    ):
        producer.send(running.topics.run_requests, value=message.value, headers=list(message.headers.items())).get(
            timeout=30
        )
    producer.close()

    expected = {uuid.uuid5(CLOUDEVENT_RUN_NAMESPACE, f"/crm/campaigns\n{e.get_id()}") for e in (structured, binary)}
    events = running.run_events(
        lambda es: {e.run_id for e in es if isinstance(e, ExtractionCompleted)} >= expected, timeout=120
    )
    for event in events:
        if isinstance(event, ExtractionCompleted) and event.run_id in expected:
            assert (event.definition, event.members, event.batches) == ("a-few", 250, 3)
    started = {event.run_id: event.requested_at for event in events if isinstance(event, RunStarted)}
    assert {started.get(run_id) for run_id in expected} == {EVENT_TIME}, "the CloudEvent's time is the run's"
    [letter] = [
        DeadLetter.model_validate_json(v)
        for v in read_until(running.bootstrap, running.topics.dead_letters, lambda vs: len(vs) >= 1)
    ]
    assert (
        f"unsupported CloudEvent type 'com.example.other'; expected '{RUN_REQUESTED_CLOUDEVENT_TYPE}'" in letter.reason
    )


def test_a_run_request_too_long_for_the_catalog_is_dead_lettered_naming_the_field_and_a_long_source_is_cut(
    extractor_process: RunningExtractor, postgres_database_factory: Callable[[], str]
):
    """A ``definition`` no definition can have and a ``requested_by`` longer than the runs' column are refused when
    decoded (before, the definition failed the checkpoint's insert on PostgreSQL with a raw database error, and the
    requested_by started a run whose ``run.started`` PostgreSQL refused to fold: the run lost its start). A long
    ``source`` (the default requested_by) starts the run, cut to the column."""
    running = extractor_process
    source = "/" + "s" * 422
    long_source = CloudEvent(
        attributes={"type": RUN_REQUESTED_CLOUDEVENT_TYPE, "source": source, "id": uuid.uuid4().hex},
        data={"definition": "a-few"},
    )
    producer = KafkaProducer(bootstrap_servers=running.bootstrap, acks="all")
    for event in (
        long_source,
        _cloudevent(definition="a-few", requested_by="x" * 100_000),
        _cloudevent(definition="a" * 50_000),
    ):
        message = to_binary(event, JSONFormat())
        producer.send(running.topics.run_requests, value=message.value, headers=list(message.headers.items())).get(
            timeout=30
        )
    producer.close()

    def refused(values: list[bytes]) -> list[DeadLetter]:
        letters = [DeadLetter.model_validate_json(v) for v in values]
        return [
            letter
            for letter in letters
            if letter.reason.startswith(("invalid event: definition:", "invalid event: requested_by:"))
        ]

    letters = refused(read_until(running.bootstrap, running.topics.dead_letters, lambda vs: len(refused(vs)) >= 2))
    assert sorted(letter.reason for letter in letters) == [
        "invalid event: definition: String should match pattern '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'",
        "invalid event: requested_by: String should have at most 200 characters",
    ]

    run_id = uuid.uuid5(CLOUDEVENT_RUN_NAMESPACE, f"{source}\n{long_source.get_id()}")
    values = read_until(
        running.bootstrap,
        running.topics.run_events,
        lambda vs: any(str(run_id) in v.decode() and b'"run.started"' in v for v in vs),
    )
    [raw] = [v for v in values if str(run_id) in v.decode() and b'"run.started"' in v]
    assert orjson.loads(raw)["requested_by"] == source[:200]
    # The notifier's fold on PostgreSQL (runs.requested_by VARCHAR(200)) takes it: the run keeps its start.
    catalog = CatalogStores.from_url(postgres_database_factory(), migrate=True)
    try:
        catalog.runs.fold_run_event(RUN_EVENT_ADAPTER.validate_json(raw))
        run = catalog.runs.get_run(run_id)
        assert run is not None
        assert (run.status.value, run.requested_by) == ("extracting", source[:200])
    finally:
        catalog.close()


def test_a_binary_cloudevent_with_a_null_valued_header_starts_its_run(extractor_process: RunningExtractor):
    """Kafka allows a header without a value (kafka-python hands it as None): a binary CloudEvent carrying one (an
    extra header here) starts its run, through the real broker, instead of being dead-lettered (before session 51:
    "not a valid CloudEvent: 'NoneType' object has no attribute 'decode'")."""
    running = extractor_process
    event = _cloudevent(definition="a-few")
    message = to_binary(event, JSONFormat())
    key = uuid.uuid4().hex
    produce_with_null_headers(
        running.bootstrap,
        running.topics.run_requests,
        key,
        message.value,
        [*message.headers.items(), ("x-debug", None)],
    )
    [sent] = [r for r in read_records_to_end(running.bootstrap, running.topics.run_requests) if r.key == key.encode()]
    assert ("x-debug", None) in sent.headers, "the broker holds the header without a value"

    run_id = uuid.uuid5(CLOUDEVENT_RUN_NAMESPACE, f"/crm/campaigns\n{event.get_id()}")
    events = running.run_events(
        lambda es: any(isinstance(e, ExtractionCompleted) and e.run_id == run_id for e in es), timeout=120
    )
    [completed] = [e for e in events if isinstance(e, ExtractionCompleted) and e.run_id == run_id]
    assert (completed.definition, completed.members, completed.batches) == ("a-few", 250, 3)
    letters = [DeadLetter.model_validate_json(v) for v in read_to_end(running.bootstrap, running.topics.dead_letters)]
    placed = (running.topics.run_requests, sent.partition, sent.offset)
    assert [x for x in letters if (x.source_topic, x.source_partition, x.source_offset) == placed] == []
