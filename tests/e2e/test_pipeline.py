"""The four services as real processes on a real broker, a real HTTP server and a real SMTP server."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import httpx
import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from shared.domain.runs import RunStatus
from shared.events import DeadLetter
from tests.e2e.conftest import MEMBERS, SECRET_TOKEN, Pipeline
from tests.e2e.scheduler_ahead import restart_on_a_shifted_clock
from tests.kafka_helpers import partitions_of, produce, read_until
from tests.metrics_helpers import created_series, parse, scrape, values

pytestmark = pytest.mark.e2e


#: A definition every minute, with a partner of its own (no other test sees its runs): the cron test's.
EVERY_MINUTE = """
kind: ConnectionProfile
name: cron-partner
spec: {{base_url: "{url}"}}
---
kind: HttpTemplate
name: cron-small
spec: {{query: first-hundred, profile: cron-partner, path: /v1/members, batch_size: 50}}
---
kind: ExportDefinition
name: every-minute
spec:
  query: first-hundred
  template: cron-small
  schedule: {{enabled: {enabled}, cron: '* * * * *', timezone: Europe/Paris}}
"""


@pytest.fixture(scope="module", autouse=True)
def cron_partner(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpReceiver]:
    """every-minute, scheduled before the module's first test; then the scheduler and the extractor restarted on
    the same clock, a few seconds before its next instant (:mod:`tests.e2e.scheduler_ahead`): its first turn of the
    minute comes seconds later, while the other tests run, instead of up to a minute later."""
    manifest = tmp_path_factory.mktemp("cron") / "every-minute.yaml"
    with HttpReceiver() as receiver:
        manifest.write_text(EVERY_MINUTE.format(url=receiver.url, enabled="true"))
        applied = pipeline.exportctl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr

        def synced() -> bool:
            due = pipeline.catalog.scheduling.due_schedules(datetime.now(UTC) + timedelta(days=1))
            return any(d.definition.name == "every-minute" for d in due)

        wait_until(synced, timeout=30, what="the scheduler to sync every-minute's schedule")
        restart_on_a_shifted_clock(pipeline, "every-minute")
        yield receiver
        manifest.write_text(EVERY_MINUTE.format(url=receiver.url, enabled="false"))
        assert pipeline.exportctl("apply", "-f", str(manifest)).returncode == 0
        wait_until(
            lambda: not pipeline.catalog.runs.active_runs(["every-minute"]), timeout=60, what="every-minute's last run"
        )


def _run_id(output: str) -> uuid.UUID:
    first_line = output.splitlines()[0]  # "run <id> requested for '<definition>'"
    return uuid.UUID(first_line.split()[1])


def _mails_for(pipeline: Pipeline, run_id: uuid.UUID):
    return [m for m in pipeline.sink.received() if m.message["X-Export-Run-Id"] == str(run_id)]


def test_an_unparseable_run_request_is_dead_lettered_and_the_services_keep_running(pipeline: Pipeline):
    garbage = b'{"definition": ["not", "a", "name"]'
    produce(pipeline.bootstrap, pipeline.topics.run_requests, [("garbage", garbage)])
    letters = read_until(
        pipeline.bootstrap,
        pipeline.topics.dead_letters,
        lambda values: any(DeadLetter.model_validate_json(v).payload == garbage.decode() for v in values),
    )
    letter = next(
        DeadLetter.model_validate_json(v)
        for v in letters
        if DeadLetter.model_validate_json(v).payload == garbage.decode()
    )
    assert letter.reason.startswith("invalid event: ")
    assert letter.service == "extractor"
    assert pipeline.services.dead() == []

    result = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout


def test_a_run_delivers_every_member_exactly_once_and_mails_the_success_recipients(pipeline: Pipeline):
    result = pipeline.exportctl("run", "to-good-partner", "--wait", "--timeout", "240")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = _run_id(result.stdout)
    assert f"read: {MEMBERS}  delivered: {MEMBERS}  failed: 0" in result.stdout

    receipts = [r for r in pipeline.good.receipts() if r.headers["Idempotency-Key"].startswith(f"{run_id}:")]
    received = Counter(member["id"] for receipt in receipts for member in receipt.members)
    assert set(received) == set(range(1, MEMBERS + 1)), "every member, none extra"
    assert set(received.values()) == {1}, "each member once"
    assert {r.headers["Authorization"] for r in receipts} == {f"Bearer {SECRET_TOKEN}"}
    assert len({r.headers["Idempotency-Key"] for r in receipts}) == MEMBERS // 500

    record = pipeline.catalog.runs.get_run(run_id)
    assert record is not None
    assert (record.status, record.extracted, record.delivered, record.failed) == (
        RunStatus.SUCCEEDED,
        MEMBERS,
        MEMBERS,
        0,
    )
    wait_until(lambda: bool(_mails_for(pipeline, run_id)), timeout=60, what="the success email")
    [mail] = _mails_for(pipeline, run_id)
    assert sorted(mail.recipients) == ["crm@example.com", "ops@example.com"]
    assert "succeeded" in mail.subject
    assert f"Delivered: {MEMBERS}" in mail.text()
    assert pipeline.catalog.runs.notifications(run_id).keys() == {"success"}


def test_an_endpoint_refusing_everything_fails_the_run_and_mails_only_the_error_recipients(pipeline: Pipeline):
    result = pipeline.exportctl("run", "to-strict-partner", "--wait", "--timeout", "240")
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = _run_id(result.stdout)
    record = pipeline.catalog.runs.get_run(run_id)
    assert record is not None
    assert (record.status, record.extracted, record.delivered, record.failed) == (RunStatus.FAILED, MEMBERS, 0, MEMBERS)
    assert record.error_samples[0].startswith("HTTP 400: ")

    wait_until(lambda: bool(_mails_for(pipeline, run_id)), timeout=60, what="the error email")
    [mail] = _mails_for(pipeline, run_id)
    assert mail.recipients == ["oncall@example.com"]
    assert "failed" in mail.subject
    assert pipeline.catalog.runs.notifications(run_id).keys() == {"error"}

    def dead_lettered_members(values: list[bytes]) -> int:
        letters = [DeadLetter.model_validate_json(v) for v in values]
        return sum(len(letter.members or []) for letter in letters if letter.run_id == run_id)

    read_until(pipeline.bootstrap, pipeline.topics.dead_letters, lambda vs: dead_lettered_members(vs) == MEMBERS)


def test_secrets_never_reach_the_logs_or_the_emails(pipeline: Pipeline):
    for name in pipeline.services.services:
        assert SECRET_TOKEN not in pipeline.services.log(name)
    for mail in pipeline.sink.received():
        assert SECRET_TOKEN not in mail.message.as_string()


def test_the_dispatcher_sends_on_uvloop_by_default(pipeline: Pipeline):
    started = [line for line in pipeline.services.log("dispatcher").splitlines() if "dispatcher event loop" in line]
    assert started, "the dispatcher should log its event loop at start"
    assert "uvloop" in started[0]


def test_the_dispatcher_exposes_prometheus_metrics(pipeline: Pipeline):
    result = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = httpx.get(f"http://127.0.0.1:{pipeline.dispatcher_metrics_port}/metrics").text
    samples = parse(metrics)
    export = {"definition": "small-to-good-partner", "profile": "good-partner"}
    [(_, delivered)] = values(samples, "member_export_dispatcher_members_delivered_total", **export)
    assert delivered >= 100
    [(_, answered)] = values(samples, "member_export_dispatcher_requests_total", **export, status_class="2xx")
    assert answered >= 2
    assert values(samples, "member_export_dispatcher_request_duration_seconds_bucket", **export)
    assert SECRET_TOKEN not in metrics


def test_every_service_exposes_its_build_its_lag_per_partition_and_per_export_series(pipeline: Pipeline):
    result = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    scraped = {name: scrape(port) for name, port in pipeline.metrics_ports.items()}
    for name, samples in scraped.items():
        build = values(samples, "member_export_build_info", service=name)
        assert [(labels["version"], value) for labels, value in build] == [(version("member-export"), 1.0)], name
        assert created_series(samples) == [], f"{name} exposes _created series"

    topics = pipeline.topics
    consumed = {
        "extractor": [topics.run_requests],
        "dispatcher": topics.member_batch_topics(),
        "notifier": [topics.run_events],
    }
    # Every partition of every topic each consumer reads, in its own group.
    partitions = {topic: partitions_of(pipeline.bootstrap, topic) for names in consumed.values() for topic in names}
    expected = {
        name: {(f"{topics.prefix}member-export-{name}", topic, str(p)) for topic in names for p in partitions[topic]}
        for name, names in consumed.items()
    }

    def lag_series() -> dict[str, set[tuple[str, str, str]]]:
        found = {}
        for name in consumed:
            lag = values(scrape(pipeline.metrics_ports[name]), "member_export_consumer_lag", service=name)
            assert all(value >= 0 for _, value in lag), lag
            found[name] = {(labels["group"], labels["topic"], labels["partition"]) for labels, _ in lag}
        return found

    # A partition's series appears once a fetch has answered for it (just after a service starts, not all have).
    try:
        wait_until(lambda: lag_series() == expected, timeout=60, what="lag series of every partition")
    except TimeoutError:
        assert lag_series() == expected  # says which are missing

    [(_, extracted)] = values(
        scraped["extractor"], "member_export_extractor_members_total", definition="small-to-good-partner"
    )
    assert extracted >= 100

    def run_counted() -> bool:
        finished = values(
            scrape(pipeline.metrics_ports["notifier"]),
            "member_export_runs_finished_total",
            definition="small-to-good-partner",
            status="succeeded",
        )
        return bool(finished) and finished[0][1] >= 1

    # The notifier counts the run as it records it final: exportctl may have seen the status first.
    wait_until(run_counted, timeout=30, what="the notifier to count the finished run")


def test_dead_letters_are_replayed_once_the_endpoint_is_fixed_and_the_history_links_the_runs(pipeline: Pipeline):
    failed = pipeline.exportctl("run", "small-to-strict-partner", "--wait", "--timeout", "120")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    original = _run_id(failed.stdout)

    def dead_lettered(values: list[bytes]) -> int:
        letters = [DeadLetter.model_validate_json(v) for v in values]
        return sum(len(letter.members or []) for letter in letters if letter.run_id == original)

    read_until(pipeline.bootstrap, pipeline.topics.dead_letters, lambda vs: dead_lettered(vs) >= 100)
    listed = pipeline.exportctl("dead-letters", "list", "--run", str(original))
    # One row: the run, its definition, its 100 refused members and the reason.
    assert re.search(rf"^{original}\s+small-to-strict-partner\s+100\s+HTTP 400", listed.stdout, re.MULTILINE), (
        listed.stdout
    )

    reject_status, pipeline.strict.state.reject_status = pipeline.strict.state.reject_status, None  # fixed
    try:
        replay = pipeline.exportctl("dead-letters", "replay", str(original), "--wait", "--timeout", "120")
    finally:
        pipeline.strict.state.reject_status = reject_status
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"replays 100 member(s) of run {original} in 2 batch(es)" in replay.stdout
    assert f"replay of run {original}" in replay.stdout
    replay_id = uuid.UUID(replay.stdout.split()[1])
    record = pipeline.catalog.runs.get_run(replay_id)
    assert record is not None
    assert (record.status, record.delivered, record.trigger, record.replay_of) == (
        RunStatus.SUCCEEDED,
        100,
        "replay",
        original,
    )
    assert sorted(pipeline.strict.accepted_member_ids()) == list(range(1, 101))
    history = pipeline.exportctl("runs", "--id", str(original))
    assert f"replayed by run {replay_id}: succeeded, delivered 100" in history.stdout


def test_the_scheduler_process_fires_a_cron_schedule(pipeline: Pipeline, cron_partner: HttpReceiver):
    """The real scheduler process fires every-minute at a turn of the minute and the run goes end to end. The
    scheduler and the extractor run on the same clock shifted ahead of real time (see cron_partner), so that the
    turn comes seconds after the module starts: the shift is the only difference from the real clock (the run is
    published ahead of its instant and held by the extractor until it, by that clock; a run the real-clock
    scheduler published ahead just before the restart is started at once, and succeeds as well)."""

    def scheduled_run_succeeded() -> bool:
        runs = pipeline.catalog.runs.list_runs("every-minute")
        return any(r.trigger == "schedule" and r.status == RunStatus.SUCCEEDED for r in runs)

    wait_until(scheduled_run_succeeded, timeout=150, interval=0.5, what="a scheduled run to succeed")
    run = next(r for r in pipeline.catalog.runs.list_runs("every-minute") if r.status == RunStatus.SUCCEEDED)
    assert run.scheduled_for is not None
    assert run.scheduled_for.second == 0
    assert (run.extracted, run.delivered) == (100, 100)
    received = [r for r in cron_partner.receipts() if r.headers["Idempotency-Key"].startswith(f"{run.run_id}:")]
    assert sorted(member["id"] for receipt in received for member in receipt.members) == list(range(1, 101))
