"""A run's failure reason and its counts stay within bounds on every path (s54): the admin API's refusal of a run
request with thousands of unknown parameters, and a run's totals in the catalog on SQLite as on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.application.run_events import record_run_event
from shared.catalog import CatalogStores
from shared.events import COUNT_MAX, BatchOutcome, ExtractionCompleted, RunStarted, Trigger
from tests.admin_app import in_process_api, seed

pytestmark = pytest.mark.integration


def test_a_run_request_with_thousands_of_unknown_parameters_is_refused_in_a_short_answer(tmp_path: Path):
    """The hunt's 920 KB body: the 422 was 880,231 bytes, quoting every name."""
    parameters = {f"k{i:05d}" + "x" * 80: 1 for i in range(10_000)}
    with in_process_api(tmp_path) as api, api.client() as client:
        seed(client)
        answer = client.post("/api/v1/export-definitions/nightly/runs", json={"parameters": parameters})
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["type"].endswith("/invalid-parameters")
    assert len(answer.content) < 2_000, len(answer.content)
    assert " and 9995 more (10000 in all); the query declares: tier" in answer.json()["detail"]
    assert api.publisher.run_requests == []


def test_a_runs_totals_over_a_32_bit_column_fold_alike_on_sqlite_and_postgresql_and_the_run_ends(
    database_url: str, migrated_catalog: Callable[[str], CatalogStores]
):
    """Two batches of in-range counts whose sum is not (before: folded on SQLite; on PostgreSQL ``integer out of
    range``, the run left dispatching until the stuck-run sweep failed it)."""
    stores = migrated_catalog(database_url)
    try:
        run = uuid.uuid4()
        for event in (
            RunStarted(run_id=run, definition="d", trigger=Trigger.MANUAL),
            ExtractionCompleted(run_id=run, definition="d", members=3, batches=2),
            BatchOutcome(run_id=run, definition="d", batch_index=0, delivered=2_000_000_000, failed=0),
            BatchOutcome(run_id=run, definition="d", batch_index=1, delivered=200_000_000, failed=0),
        ):
            record_run_event(event, runs=stores.runs, watermarks=stores.extraction)
        record = stores.runs.get_run(run)
        assert record is not None
        assert (record.status.value, record.batches_done, record.delivered) == ("succeeded", 2, COUNT_MAX)
    finally:
        stores.close()
