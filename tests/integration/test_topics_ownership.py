"""Topics owned by ops (``EXPORT_TOPICS_CREATE=false``) against the real broker: the services check instead
of creating, refuse to start naming exactly what is missing, and start when ops have created it all."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from shared.catalog import CatalogStores
from shared.kafka import ensure_topics, prepare_kafka, topic_specs
from shared.settings import CommonSettings
from tests.kafka_helpers import create_topic

pytestmark = pytest.mark.integration


def _existing(bootstrap: str, prefix: str) -> dict[str, int]:
    """The topics of ``prefix`` on the broker, with their partition counts."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-topics-ownership")
    try:
        names = [name for name in admin.list_topics() if name.startswith(prefix)]
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)} if names else {}
    finally:
        admin.close()


@pytest.fixture
def owned(settings: CommonSettings) -> CommonSettings:
    return settings.model_copy(update={"topics_create": False})


def test_the_specs_name_every_topic_with_the_configured_partitions_and_replication(settings: CommonSettings):
    specs = topic_specs(settings.model_copy(update={"topic_partitions": 4, "topic_replication_factor": 3}))
    assert [spec.name for spec in specs] == settings.topics.all()
    assert [(spec.partitions, spec.replication_factor, dict(spec.configs)) for spec in specs] == [(4, 3, {})] * 6


def test_created_topics_are_what_the_specs_say(settings: CommonSettings):
    ensure_topics(settings)
    specs = {spec.name: spec.partitions for spec in topic_specs(settings)}
    assert _existing(settings.kafka_bootstrap_servers, settings.topic_prefix) == specs


def test_with_topics_owned_by_ops_a_service_refuses_to_start_naming_exactly_the_missing_topics(owned: CommonSettings):
    topics = owned.topics
    create_topic(owned.kafka_bootstrap_servers, topics.run_requests, partitions=2)
    create_topic(owned.kafka_bootstrap_servers, topics.run_events, partitions=2)
    with pytest.raises(SystemExit) as refused:
        prepare_kafka(owned)
    missing = [topics.member_batches_for("high"), topics.member_batches, topics.member_batches_for("low")]
    assert str(refused.value) == (
        f"topics missing: {', '.join([*missing, topics.dead_letters])} — create them (e.g. the chart's KafkaTopic "
        "resources) or set EXPORT_TOPICS_CREATE=true (a topic this service's user may not DESCRIBE counts as missing)"
    )
    # Nothing was created on the operator's behalf.
    assert set(_existing(owned.kafka_bootstrap_servers, owned.topic_prefix)) == {topics.run_requests, topics.run_events}


def test_with_every_topic_created_by_ops_the_services_start_and_create_nothing(owned: CommonSettings):
    for name in owned.topics.all():
        create_topic(owned.kafka_bootstrap_servers, name, partitions=1)  # ops chose fewer partitions: accepted
    prepare_kafka(owned)
    assert _existing(owned.kafka_bootstrap_servers, owned.topic_prefix) == dict.fromkeys(owned.topics.all(), 1)


def test_a_service_process_with_topics_owned_by_ops_exits_at_start_listing_them(kafka_bootstrap: str, tmp_path: Path):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(catalog_url, migrate=True).close()
    prefix = f"ops{uuid.uuid4().hex[:8]}."
    done = subprocess.run(
        [sys.executable, "-m", "services.notifier"],
        env={
            **os.environ,
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EXPORT_TOPIC_PREFIX": prefix,
            "EXPORT_TOPICS_CREATE": "false",
            "EXPORT_CATALOG_URL": catalog_url,
            "EXPORT_METRICS_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"topics missing: {prefix}exports.run-requests, ")
    assert "EXPORT_TOPICS_CREATE=true" in last_line
    assert "Traceback" not in done.stderr
    assert _existing(kafka_bootstrap, prefix) == {}
