"""The attempt inspector in the real dispatcher process: a batch from Kafka, a partner that refuses once, and
exportctl showing exactly what was sent and answered, attempt by attempt, the token masked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import MemberBatch
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.kafka_helpers import produce, service_env

pytestmark = pytest.mark.e2e

TOKEN = "process-bearer-token-31337"


def test_the_dispatcher_process_keeps_each_attempt_and_exportctl_shows_the_pair(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    prefix = f"i{uuid.uuid4().hex[:10]}."
    settings = CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, topic_partitions=3)
    ensure_topics(settings)
    with HttpReceiver(fail_first=1) as receiver:
        catalog = CatalogStores.from_url(catalog_url, migrate=True)
        auth = {"type": "bearer", "token": "env:PARTNER_INSPECT_TOKEN"}
        catalog.definitions.apply(
            ConnectionProfile.model_validate({"name": "p", "base_url": receiver.url, "auth": auth})
        )
        catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/v1/members"))
        catalog.definitions.apply(ExportDefinition(name="d", query="q", template="t"))
        env = service_env(kafka_bootstrap, prefix, catalog_url, f"sqlite:///{tmp_path / 'members.db'}") | {
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05",
            "EXPORT_INSPECTOR_FLUSH_SECONDS": "0.2",
            "PARTNER_INSPECT_TOKEN": TOKEN,
        }
        run_id = uuid.uuid4()
        batch = MemberBatch(
            run_id=run_id, definition="d", template="t", batch_index=0, members=[{"id": 7, "email": "zoe@example.com"}]
        )
        with LocalPipeline(env=env, log_dir=tmp_path / "logs", services=("dispatcher",)) as pipeline:
            produce(kafka_bootstrap, settings.topics.member_batches, [(batch.identity, batch.to_bytes())])
            try:
                definition_id = catalog.definitions.get_versioned(ExportDefinition, "d")[0]
                wait_until(
                    lambda: len(catalog.attempts.attempts(definition_id)) == 2, timeout=60, what="both attempts kept"
                )
            finally:
                codes = pipeline.stop()
        catalog.close()
    assert codes == {"dispatcher": 0}
    assert [r.status for r in receiver.receipts()] == [503, 200]

    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORT_CATALOG_URL", catalog_url)
    assert exportctl(["attempts", "d", "--details"]) == 0
    shown = capsys.readouterr().out
    second, first = shown.split("--- ")[1:]
    assert f"run {run_id} batch 0 attempt 1" in first
    assert "< 503" in first
    assert f"run {run_id} batch 0 attempt 2" in second
    assert "< 200" in second
    for attempt in (first, second):
        assert "> POST http://127.0.0.1:" in attempt
        assert "/v1/members\n" in attempt
        assert "> Authorization: ***" in attempt
        assert '[{"id":7,"email":"zoe@example.com"}]' in attempt
    assert TOKEN not in shown
