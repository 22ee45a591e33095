"""Two extractor processes on one split run, on real Kafka, with SQLite and a real PostgreSQL member store:
one is killed (SIGKILL) in the middle of a key range; the other takes its partitions over and resumes
that range from the range's checkpoint. Every member reaches the member-batch topic, duplicates only as
whole batches with the same identity, and the run's totals are exact."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
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
def catalog(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    catalog = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
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

        def range_under_way(index: int) -> int | None:
            """The range replica ``index`` says it is extracting (started, not said extracted), if any."""
            current = None
            for line in replicas.log_lines(index):
                if line.get("run_id") != str(request.run_id):
                    continue
                if line.get("event") == "range extraction started":
                    current = line["range"]
                elif line.get("event") == "range extracted" and line["range"] == current:
                    current = None
            return current

        def past_checkpoints(range_index: int) -> bool:
            """The range is not finished and has checkpoints well into it (stays true until it is extracted)."""
            stored = catalog.extraction.range_checkpoint(request.run_id, range_index)
            assert stored is not None
            return stored.state is RangeState.EXTRACTING and stored.members >= MEMBERS // 20

        victim: tuple[int, int] | None = None  # (replica, range)

        def kill_a_replica_mid_range() -> bool:
            nonlocal victim
            ranges = catalog.extraction.run_ranges(request.run_id)
            assert not ranges or any(r.state is not RangeState.EXTRACTED for r in ranges), "run over before a kill"
            for index in range(replicas.count):
                range_index = range_under_way(index)
                if range_index is None or not past_checkpoints(range_index):
                    continue
                # Frozen, the replica can neither finish the range nor log: checked again, the kill is mid-range.
                replicas.pause(index)
                if range_under_way(index) == range_index and past_checkpoints(range_index):
                    replicas.kill(index)
                    victim = (index, range_index)
                    return True
                replicas.resume(index)
            return False

        wait_until(kill_a_replica_mid_range, timeout=180, interval=0.02, what="a replica mid-range to kill")
        assert victim is not None
        killed, killed_range = victim
        survivor = 1 - killed
        at_kill = {r.range_index: r for r in catalog.extraction.run_ranges(request.run_id)}
        assert len(at_kill) == 3
        assert at_kill[killed_range].last_key is not None

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

        # The survivor resumed the killed replica's range from that range's checkpoint at the kill.
        resumed = [
            line
            for line in replicas.log_lines(survivor)
            if line.get("event") == "range extraction started"
            and line["range"] == killed_range
            and line["resume_after"] == at_kill[killed_range].last_key
            and line["next_batch"] == at_kill[killed_range].next_batch_index
        ]
        assert resumed, replicas.log_path(survivor).read_text()[-3000:]
        assert all(r.state is RangeState.EXTRACTED for r in catalog.extraction.run_ranges(request.run_id))
    finally:
        replicas.stop()
