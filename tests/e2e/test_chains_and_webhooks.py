"""Chained exports and webhook notifications through the four real service processes (Kafka, SQLite catalog,
HTTP receivers, SMTP): a follower runs once per successful run of what it follows, never after a failure,
two followers of one definition each run once (and its email goes out), and the notifier process's webhooks are
sent once per run and event, across a SIGKILL."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from shared.domain.runs import RunStatus
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

MANIFEST = """
kind: ExportDefinition
name: lead
spec:
  query: first-hundred
  template: good-small
  notifications:
    webhooks:
      ops: {{url: "{hooks}/ops", events: [started, succeeded]}}
---
kind: ExportDefinition
name: follower
spec:
  query: first-hundred
  template: good-small
  schedule: {{enabled: true, after: {{definition: lead, statuses: [succeeded]}}}}
---
kind: ExportDefinition
name: strict-lead
spec:
  query: first-hundred
  template: strict-small
  notifications:
    error: {{enabled: true, recipients: [oncall@example.com]}}
---
kind: ExportDefinition
name: after-strict
spec:
  query: first-hundred
  template: good-small
  schedule: {{enabled: true, after: {{definition: strict-lead}}}}
---
kind: ExportDefinition
name: twin-one
spec:
  query: first-hundred
  template: good-small
  schedule: {{enabled: true, after: {{definition: small-to-good-partner}}}}
---
kind: ExportDefinition
name: twin-two
spec:
  query: first-hundred
  template: good-small
  schedule: {{enabled: true, after: {{definition: small-to-good-partner}}}}
"""


@pytest.fixture(scope="module")
def pipeline_settings() -> dict[str, str]:
    # The least session timeout the product and the broker allow: the restarted notifier's group waits for the killed
    # one's session to end before it is given the partitions (6 s instead of the default 10 s).
    return {"EXPORT_KAFKA_SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture(scope="module")
def hooks() -> Iterator[HttpReceiver]:
    with HttpReceiver() as hooks:
        yield hooks


@pytest.fixture(scope="module")
def chained(pipeline: Pipeline, hooks: HttpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    manifest: Path = tmp_path_factory.mktemp("chains") / "chains.yaml"
    manifest.write_text(MANIFEST.format(hooks=hooks.url))
    applied = pipeline.exportctl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    return pipeline


def _run(pipeline: Pipeline, definition: str) -> uuid.UUID:
    result = pipeline.exportctl("run", definition, "--wait", "--timeout", "120")
    first_line = result.stdout.splitlines()[0]  # "run <id> requested for '<definition>'"
    return uuid.UUID(first_line.split()[1])


def _events_by_run(hooks: HttpReceiver) -> Counter[tuple[str, str]]:
    """(run id, event type) of every webhook received. (Signatures are verified by the integration tests: this
    pipeline's services are given no secret for a reference to name.)"""
    assert len({r.headers["webhook-id"] for r in hooks.receipts()}) == len(hooks.receipts())
    return Counter((r.body["data"]["run_id"], r.body["type"]) for r in hooks.receipts())


def _follower_runs(pipeline: Pipeline, definition: str = "follower") -> list[RunStatus]:
    return [run.status for run in pipeline.catalog.runs.list_runs(definition)]


def test_a_follower_runs_once_per_run_it_follows_and_webhooks_go_out_once_across_a_notifier_kill(
    chained: Pipeline, hooks: HttpReceiver
):
    first = _run(chained, "lead")
    wait_until(lambda: _follower_runs(chained) == [RunStatus.SUCCEEDED], timeout=120, what="the follower's run")
    wait_until(lambda: len(hooks.receipts()) == 2, timeout=30, what="the lead's two webhooks")

    chained.services.kill("notifier")  # its last poll may be read again by the restarted one
    chained.services.start_service("notifier")
    second = _run(chained, "lead")
    wait_until(lambda: len(_follower_runs(chained)) == 2, timeout=120, what="the follower's second run")
    wait_until(lambda: len(hooks.receipts()) >= 4, timeout=60, what="the second run's webhooks")
    wait_until(lambda: _follower_runs(chained) == [RunStatus.SUCCEEDED] * 2, timeout=120, what="both succeeded")

    assert _events_by_run(hooks) == Counter(
        {(str(run), f"member_export.run.{event}"): 1 for run in (first, second) for event in ("started", "succeeded")}
    )
    followers = chained.catalog.runs.list_runs("follower")
    assert {(run.trigger, run.requested_by) for run in followers} == {("event", "chain:lead")}
    assert (followers[0].extracted, followers[0].delivered) == (100, 100)


def test_a_follower_of_successes_does_not_run_after_a_failure(chained: Pipeline):
    failed = _run(chained, "strict-lead")
    assert (run := chained.catalog.runs.get_run(failed)) is not None
    assert run.status is RunStatus.FAILED
    # The notifier requests followers before it mails: once the error email is out, it has decided.
    wait_until(
        lambda: any(m.message["X-Export-Run-Id"] == str(failed) for m in chained.sink.received()),
        timeout=30,
        what="the failed run's error email",
    )
    assert _follower_runs(chained, "after-strict") == []


def test_two_followers_of_one_definition_each_run_once_and_its_success_email_goes_out(chained: Pipeline):
    lead = _run(chained, "small-to-good-partner")  # the pipeline's, with its success email
    wait_until(
        lambda: any(m.message["X-Export-Run-Id"] == str(lead) for m in chained.sink.received()),
        timeout=60,
        what="the followed run's success email",
    )
    wait_until(
        lambda: _follower_runs(chained, "twin-one") == _follower_runs(chained, "twin-two") == [RunStatus.SUCCEEDED],
        timeout=120,
        what="each follower's one run",
    )
    for name in ("twin-one", "twin-two"):
        [run] = chained.catalog.runs.list_runs(name)
        assert (run.trigger, run.requested_by, run.delivered) == ("event", "chain:small-to-good-partner", 100)
