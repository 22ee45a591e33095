"""Issue 17 on the real stack: a profile's circuit breaker holds its batches while the partner fails and
delivers them once it recovers; two dispatcher replicas hold a profile's max_in_flight between them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from devtools.http_receiver import HttpReceiver
from devtools.pipeline import LocalPipeline
from devtools.processes import free_port, wait_until
from shared.domain.runs import RunStatus
from shared.events import DeadLetter
from tests.e2e.conftest import Pipeline
from tests.kafka_helpers import read_to_end
from tests.metrics_helpers import scrape, values

pytestmark = pytest.mark.e2e

ONCALL = "breaker-oncall@example.com"
BREAKER = {"minimum_requests": 4, "failure_rate": 0.5, "window_seconds": 30, "open_seconds": 2, "half_open_probes": 2}


@pytest.fixture(scope="module")
def failing() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def slow() -> Iterator[HttpReceiver]:
    with HttpReceiver(delay=0.2) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def applied(pipeline: Pipeline, failing: HttpReceiver, slow: HttpReceiver) -> Pipeline:
    documents = [
        {
            "kind": "ConnectionProfile",
            "name": "breaker-partner",
            "spec": {"base_url": failing.url, "circuit_breaker": BREAKER},
        },
        {
            "kind": "ConnectionProfile",
            "name": "narrow-partner",
            "spec": {"base_url": slow.url, "rate_limit": {"max_in_flight": 4}},
        },
        {
            "kind": "SavedQuery",
            "name": "first-two-thousand",
            "spec": {"sql": "SELECT id, email FROM members WHERE id <= 2000", "key_column": "id"},
        },
        {
            "kind": "HttpTemplate",
            "name": "breaker-t",
            "spec": {"query": "first-hundred", "profile": "breaker-partner", "path": "/m", "batch_size": 10},
        },
        {
            "kind": "HttpTemplate",
            "name": "narrow-t",
            "spec": {"query": "first-two-thousand", "profile": "narrow-partner", "path": "/m", "batch_size": 20},
        },
        {
            "kind": "ExportDefinition",
            "name": "to-breaker-partner",
            "spec": {
                "query": "first-hundred",
                "template": "breaker-t",
                "notifications": {"error": {"enabled": True, "recipients": [ONCALL]}},
            },
        },
        {
            "kind": "ExportDefinition",
            "name": "to-narrow-partner",
            "spec": {"query": "first-two-thousand", "template": "narrow-t"},
        },
    ]
    manifest = Path(pipeline.work_dir) / "breaker.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    result = pipeline.exportctl("apply", "-f", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    return pipeline


def _start(pipeline: Pipeline, definition: str) -> uuid.UUID:
    result = pipeline.exportctl("run", definition)
    assert result.returncode == 0, result.stdout + result.stderr
    return uuid.UUID(result.stdout.splitlines()[0].split()[1])  # "run <id> requested for '<definition>'"


def _metric(port: int, name: str, **labels: str) -> float:
    return sum(value for _, value in values(scrape(port), name, **labels))


def _dead_letters(pipeline: Pipeline, run_id: uuid.UUID) -> list[DeadLetter]:
    letters = [DeadLetter.model_validate_json(v) for v in read_to_end(pipeline.bootstrap, pipeline.topics.dead_letters)]
    return [letter for letter in letters if letter.run_id == run_id]


def test_a_breaker_holds_batches_while_the_partner_fails_and_delivers_them_when_it_recovers(
    applied: Pipeline, failing: HttpReceiver
):
    port = applied.dispatcher_metrics_port
    failing.state.share_503 = 1.0  # every request answers 503
    run_id = _start(applied, "to-breaker-partner")

    def opened_twice() -> bool:  # opened, probed, failed, opened again
        return _metric(port, "member_export_circuit_transitions_total", profile="breaker-partner", state="open") >= 2

    wait_until(opened_twice, timeout=60, what="the breaker to open, probe and open again")
    assert _metric(port, "member_export_consumer_held_records", service="dispatcher") > 0
    run = applied.catalog.runs.get_run(run_id)
    assert run is not None
    assert run.status is not RunStatus.FAILED
    assert run.failed == 0
    assert _dead_letters(applied, run_id) == []  # nothing dead-lettered for the outage

    failing.state.share_503 = 0.0  # the partner recovers

    def finished() -> bool:
        record = applied.catalog.runs.get_run(run_id)
        return record is not None and record.finished_at is not None

    wait_until(finished, timeout=90, what="the run to finish")
    run = applied.catalog.runs.get_run(run_id)
    assert run is not None
    assert (run.status, run.delivered, run.failed) == (RunStatus.SUCCEEDED, 100, 0)
    assert set(failing.accepted_member_ids()) >= set(range(1, 101))
    assert _dead_letters(applied, run_id) == []
    assert _metric(port, "member_export_circuit_state", profile="breaker-partner") == 0
    assert _metric(port, "member_export_circuit_transitions_total", profile="breaker-partner", state="closed") == 1
    assert _metric(port, "member_export_consumer_held_records", service="dispatcher") == 0

    def circuit_mails() -> list[str]:
        return [m.message["X-Export-Circuit"] for m in applied.sink.received() if m.message["X-Export-Circuit"]]

    # One email when it opened (however many times it reopened after a failed probe), one when it closed.
    wait_until(lambda: len(circuit_mails()) >= 2, timeout=30, what="the breaker's emails")
    assert sorted(circuit_mails()) == ["breaker-partner; closed; 1", "breaker-partner; open; 1"]
    assert all(m.message["To"] == ONCALL for m in applied.sink.received() if m.message["X-Export-Circuit"])


def test_two_dispatcher_replicas_hold_a_profiles_max_in_flight_between_them(applied: Pipeline, slow: HttpReceiver):
    second_port = free_port()
    extra = LocalPipeline(
        applied.env,
        applied.work_dir / "logs-second-dispatcher",
        services=("dispatcher",),
        service_env={"dispatcher": {"EXPORT_METRICS_PORT": str(second_port)}},
    )
    with extra:
        batches = applied.topics.member_batch_topics()

        def second_consumes() -> bool:  # in the group, with partitions of its own
            try:
                lags = values(scrape(second_port), "member_export_consumer_lag")
            except Exception:  # noqa: BLE001 - not listening yet
                return False
            return any(labels.get("topic") in batches for labels, _ in lags)

        wait_until(second_consumes, timeout=90, what="the second dispatcher to take partitions")
        wait_until(lambda: _fresh_replicas(applied) == 2, timeout=30, what="both replicas to beat in the catalog")

        run_id = _start(applied, "to-narrow-partner")
        ports = (applied.dispatcher_metrics_port, second_port)

        def both_in_flight() -> bool:  # both replicas delivering to the profile at the same moment
            in_flight = "member_export_dispatcher_in_flight_requests"
            return all(_metric(p, in_flight, profile="narrow-partner") > 0 for p in ports)

        wait_until(both_in_flight, timeout=60, interval=0.05, what="both replicas to deliver at once")

        def finished() -> bool:
            record = applied.catalog.runs.get_run(run_id)
            return record is not None and record.finished_at is not None

        wait_until(finished, timeout=180, what="the run to finish")
        run = applied.catalog.runs.get_run(run_id)
        assert run is not None
        assert (run.status, run.delivered, run.failed) == (RunStatus.SUCCEEDED, 2000, 0)
        assert 2 <= slow.state.max_active <= 4  # together, never past the profile's max_in_flight
        assert extra.stop() == {"dispatcher": 0}


def _fresh_replicas(pipeline: Pipeline) -> int:
    with pipeline.catalog.database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM dispatcher_replicas WHERE beat_at > :since"), {"since": time.time() - 10}
            ).scalar_one()
        )
