"""Refused members retried by the next run, and the member delivery log, through the real service processes
(Kafka, an SQLite catalog and member store, a partner receiver refusing some members): members refused with
503 past the dispatcher's retry budget are delivered by the next run and counted as retries; a member
refused as invalid (422) is not retried after its limit; the delivery log answers through the API and
exportctl within business-unit scopes, with no secret in any answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from devtools.http_receiver import HttpReceiver
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.member_retries import RetryState
from shared.domain.runs import RunRecord
from tests.admin_server import AdminServer
from tests.e2e.conftest import SECRET_TOKEN, Pipeline
from tests.e2e.test_exportctl_api import admin, as_  # noqa: F401 - the module's admin API, and its callers

pytestmark = pytest.mark.e2e

MANIFEST = """
kind: ConnectionProfile
name: picky-partner
spec: {{base_url: "{picky}", auth: {{type: bearer, token: "env:PARTNER_E2E_TOKEN"}}}}
---
kind: SavedQuery
name: next-fifty
spec: {{sql: "SELECT id, email FROM members WHERE id > 100 AND id <= 150", key_column: id}}
---
kind: HttpTemplate
name: picky-hundred
spec: {{query: first-hundred, profile: picky-partner, path: /v1/members, batch_size: 10}}
---
kind: HttpTemplate
name: picky-fifty
spec: {{query: next-fifty, profile: picky-partner, path: /v1/members, batch_size: 10}}
---
kind: ExportDefinition
name: retried-503
spec: {{business_unit: emea, query: first-hundred, template: picky-hundred, retry_rejected: {{runs: 2}}}}
---
kind: ExportDefinition
name: retried-422
spec: {{business_unit: apac, query: next-fifty, template: picky-fifty, retry_rejected: {{invalid_runs: 1}}}}
"""

UNAVAILABLE = {member_id: 503 for member_id in range(1, 11)}
INVALID = 142


@pytest.fixture(scope="module")
def pipeline_settings() -> dict[str, str]:
    # A small retry budget: a 503 is given up within the run after 2 attempts, 50 ms apart.
    return {"EXPORT_DISPATCHER_MAX_ATTEMPTS": "2", "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def picky(pipeline: Pipeline) -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        manifest = pipeline.work_dir / "retries.yaml"
        manifest.write_text(MANIFEST.format(picky=receiver.url))
        applied = pipeline.exportctl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        yield receiver


def _run(pipeline: Pipeline, definition: str) -> RunRecord:
    """Run a definition to its end (exportctl on the catalog directly); its record."""
    ran = pipeline.exportctl("run", definition, "--wait", "--timeout", "120")
    assert ran.stdout.startswith("run "), ran.stdout + ran.stderr
    record = pipeline.catalog.runs.get_run(uuid.UUID(ran.stdout.split()[1]))
    assert record is not None, ran.stdout + ran.stderr
    assert record.status.is_final, ran.stdout + ran.stderr
    return record


@pytest.fixture(scope="module")
def runs_503(pipeline: Pipeline, picky: HttpReceiver) -> list[RunRecord]:
    """retried-503 run twice: members 1 to 10 refused with 503 by the first run, the partner back for the second."""
    picky.state.member_statuses = dict(UNAVAILABLE)
    first = _run(pipeline, "retried-503")
    picky.state.member_statuses = {}
    return [first, _run(pipeline, "retried-503")]


@pytest.fixture(scope="module")
def runs_422(pipeline: Pipeline, picky: HttpReceiver) -> list[RunRecord]:
    """retried-422 run three times: member 142 refused as invalid every time (retried once: its limit)."""
    picky.state.member_statuses = {INVALID: 422}
    try:
        return [_run(pipeline, "retried-422") for _ in range(3)]
    finally:
        picky.state.member_statuses = {}


def _id_of(pipeline: Pipeline, definition: str) -> str:
    """The definition's stable id (per-member state is keyed by it)."""
    return str(pipeline.catalog.definitions.get_versioned(ExportDefinition, definition)[0])


def test_members_refused_with_503_are_delivered_by_the_next_run_and_counted_as_retries(
    pipeline: Pipeline, picky: HttpReceiver, runs_503: list[RunRecord]
):
    first, second = runs_503
    assert (first.extracted, first.delivered, first.failed, first.retried) == (100, 90, 10, 0)
    # The second run's own pages carry the ten (its query returns them): sent once, counted as retries.
    assert (second.extracted, second.delivered, second.failed, second.retried) == (100, 100, 0, 10)
    accepted = picky.accepted_member_ids()
    assert all(accepted[member_id] == 1 for member_id in UNAVAILABLE)  # delivered once, by the second run
    states = pipeline.catalog.retries.states(_id_of(pipeline, "retried-503"), [str(i) for i in UNAVAILABLE])
    assert {s.state for s in states.values()} == {RetryState.DELIVERED}
    assert {s.last_run for s in states.values()} == {str(second.run_id)}
    # The dead letters of the first run say where their members stand now.
    listed = pipeline.exportctl("dead-letters", "list", "--run", str(first.run_id), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [group["retry"] for group in json.loads(listed.stdout)] == [f"10 delivered by run {second.run_id}"]


def test_a_member_refused_as_invalid_is_not_retried_after_its_limit(pipeline: Pipeline, runs_422: list[RunRecord]):
    assert [(r.extracted, r.delivered, r.failed) for r in runs_422] == [(50, 49, 1)] * 3
    # invalid_runs: 1: the second run sends it again (a retry), the third no more.
    assert [r.retried for r in runs_422] == [0, 1, 0]
    state = pipeline.catalog.retries.states(_id_of(pipeline, "retried-422"), [str(INVALID)])[str(INVALID)]
    assert (state.state, state.status, state.failed_runs) == (RetryState.GIVEN_UP, 422, 3)


def test_the_delivery_log_answers_for_delivered_and_failed_members_within_scopes(
    pipeline: Pipeline,
    admin: AdminServer,  # noqa: F811 - the fixture imported above
    runs_503: list[RunRecord],
    runs_422: list[RunRecord],
):
    second, last_422 = runs_503[1], runs_422[-1]
    with admin.client("emea-viewer") as emea, admin.client("viewer") as viewer:
        delivered = emea.get("/api/v1/export-definitions/retried-503/members/5/deliveries")
        assert delivered.status_code == 200, delivered.text
        body = delivered.json()
        assert body["last"]["outcome"] == "delivered"
        assert body["last"]["run_id"] == str(second.run_id)
        assert body["last"]["attempts"] >= 1
        assert body["retry"]["state"] == "delivered"
        failed = viewer.get(f"/api/v1/export-definitions/retried-422/members/{INVALID}/deliveries")
        assert failed.status_code == 200, failed.text
        last = failed.json()["last"]
        assert (last["outcome"], last["status"], last["run_id"]) == ("failed", 422, str(last_422.run_id))
        assert "422" in last["reason"]
        assert failed.json()["retry"]["state"] == "given_up"
        # Another unit's definition is refused to a scoped caller (as on its other routes); an unknown key: 404.
        assert emea.get(f"/api/v1/export-definitions/retried-422/members/{INVALID}/deliveries").status_code == 403
        assert viewer.get("/api/v1/export-definitions/retried-503/members/999999/deliveries").status_code == 404
        answers = [delivered.text, failed.text]
    direct = pipeline.exportctl("deliveries", "retried-422", str(INVALID))
    through_api = pipeline.exportctl("deliveries", "retried-422", str(INVALID), env=as_(admin, "viewer"))
    assert direct.returncode == through_api.returncode == 0, direct.stderr + through_api.stderr
    assert direct.stdout == through_api.stdout  # one view, whichever way
    assert "last delivery: failed (422: " in direct.stdout
    assert str(last_422.run_id) in direct.stdout
    scoped = pipeline.exportctl("deliveries", "retried-422", str(INVALID), env=as_(admin, "emea-viewer"))
    assert scoped.returncode == 4, scoped.stdout + scoped.stderr
    assert "business unit" in scoped.stderr
    delivered_cli = pipeline.exportctl("deliveries", "retried-503", "5", "-o", "json", env=as_(admin, "emea-viewer"))
    assert json.loads(delivered_cli.stdout)["last"]["outcome"] == "delivered"
    for answer in [*answers, direct.stdout, through_api.stdout, delivered_cli.stdout]:
        assert SECRET_TOKEN not in answer
