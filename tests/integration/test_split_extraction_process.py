"""Two extractor processes on one split run, on real Kafka, with SQLite and a real PostgreSQL member store:
one is killed (SIGKILL) in the middle of a key range; the other takes its partitions over and resumes
that range from the range's checkpoint. Every member reaches the member-batch topic, duplicates only as
whole batches with the same identity, and the run's totals are exact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from devtools.processes import wait_until
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import RangeState
from shared.events import ExtractionCompleted, RunRequested
from shared.querystore.demo_data import create_demo_members
from shared.topics import Topics
from tests.extractor_replicas import ExtractorReplicas, wait_for_extraction
from tests.kafka_helpers import produce, read_until, service_env

pytestmark = pytest.mark.integration

MEMBERS = 200_000
PAGE = 200
BATCH = 100


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_database_factory) -> str:
    url = f"sqlite:///{tmp_path / 'members.db'}" if request.param == "sqlite" else postgres_database_factory()
    engine = make_engine(url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    return url


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[CatalogStores]:
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="all", sql="SELECT id, email, tier, points, updated_at FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", batch_size=BATCH))
    catalog.definitions.apply(ExportDefinition(name="everyone", query="all", template="t"))
    yield catalog
    catalog.close()


def test_a_replica_killed_mid_range_is_taken_over_and_no_member_is_lost(
    store_url: str, catalog: CatalogStores, kafka_bootstrap: str, tmp_path: Path
):
    prefix = f"s{uuid.uuid4().hex[:10]}."
    topics = Topics(prefix)
    env = service_env(kafka_bootstrap, prefix, str(catalog.database.engine.url), store_url) | {
        "EXPORT_EXTRACTOR_PAGE_SIZE": str(PAGE),
        "EXPORT_EXTRACTOR_RANGE_MEMBERS": "20000",  # 200,000 members, 3 partitions: 3 ranges
        "EXPORT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "EXPORT_LOG_FORMAT": "json",
    }
    replicas = ExtractorReplicas(env, 2, tmp_path / "logs").start()
    try:
        replicas.wait_joined(kafka_bootstrap, prefix)
        request = RunRequested(definition="everyone")
        produce(kafka_bootstrap, topics.run_requests, [(str(request.run_id), request.to_bytes())])

        def two_ranges_under_way() -> bool:
            ranges = catalog.extraction.run_ranges(request.run_id)
            working = [r for r in ranges if r.state is RangeState.EXTRACTING and r.members >= MEMBERS // 20]
            return len(working) >= 2

        # Two ranges under way at once are on both replicas (each extracts one range at a time).
        wait_until(two_ranges_under_way, timeout=180, interval=0.02, what="two ranges under way")
        replicas.kill(0)
        at_kill = {r.range_index: r for r in catalog.extraction.run_ranges(request.run_id)}
        assert len(at_kill) == 3

        completed = wait_for_extraction(kafka_bootstrap, topics.run_events, request.run_id, timeout=240)
        assert isinstance(completed, ExtractionCompleted)
        assert completed.members == MEMBERS

        batches: dict[int, list[int]] = {}
        records = 0

        def read_all(values: list[bytes]) -> bool:
            nonlocal records
            for value in values[records:]:
                batch = orjson.loads(value)
                ids = [m["id"] for m in batch["members"]]
                assert batches.setdefault(batch["batch_index"], ids) == ids  # twice: the same batch
            records = len(values)
            return len(batches) == completed.batches

        read_until(kafka_bootstrap, topics.member_batches, read_all, timeout=180)
        assert sorted(i for ids in batches.values() for i in ids) == list(range(1, MEMBERS + 1))
        assert records - len(batches) <= 2 * PAGE // BATCH, "more than the killed range's pages in flight, twice"

        # The survivor resumed a range the killed replica had under way, from that range's checkpoint.
        resumed = [
            line
            for line in replicas.log_lines(1)
            if line.get("event") == "range extraction started"
            and at_kill[line["range"]].last_key is not None
            and line["resume_after"] not in (None, at_kill[line["range"]].lower)
        ]
        assert resumed, replicas.log_path(1).read_text()[-3000:]
        assert all(r.state is RangeState.EXTRACTED for r in catalog.extraction.run_ranges(request.run_id))
    finally:
        replicas.stop()
