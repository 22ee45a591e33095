"""A real Prometheus (Debian's server) scrapes the local pipeline through an export, with the alert rules loaded;
then every dashboard panel and every alert is evaluated through Prometheus' HTTP API.

The scrape configuration gives the targets the labels the chart's PodMonitor gives them in a cluster (job
``member-export``, namespace, pod, container = the service), so the rules run on the same label shapes.

The export is one of each thing the dashboard and the alerts watch: a partner that answers 503, then 429, then
refuses a batch (retries, throttling, the rate limiter, failed members, dead letters); a saved query whose table
is gone (a failed run); a record no service can read (a consumer dead letter); the admin API called; two
definitions scheduled every minute, one still running from a manual run when it is due (fired, skipped; the
extractor holds the fired run until its instant, then starts it: the start delay); then the scheduler restarted
with no catch-up window and the notifier with an unreachable SMTP server (missed runs, failed emails). The scheduler
meets each of those turns of the minute seconds after it is restarted instead of up to a minute later
(:mod:`tests.e2e.scheduler_ahead`): for the first, it and the extractor are restarted on the same clock, a few
seconds before the turn (the run published ahead and held until its instant by the same clock, the shift the only
difference); for the second, the scheduler's clock is put just past the turn.

How a query is judged (a panel or alert that names a metric or label nobody exposes fails):

- a panel: each of its queries, with the variables set to the drill-down's export and partner, over the whole
  export (``query_range``), must return series, and every label its legend or a ``by (...)`` names must be on them;
- an alert: each vector selector in it must match series (the metric, its label names and the values it
  matches), and the expression without its comparisons to constants (``x > 0 and y > 10``: ``x`` and ``y``)
  must return series at the end of the export, with every ``by (...)`` label present; the rules must evaluate
  without error in the server, and the alerts the export's events call for must fire.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devtools.dashboard_picture import expand, legend, load_dashboard, render, targets
from devtools.http_receiver import HttpReceiver
from devtools.processes import free_port, wait_until
from devtools.prometheus import PrometheusServer, prometheus_tools
from shared.catalog import make_engine
from tests.admin_server import AdminServer, admin_server
from tests.e2e.conftest import Pipeline
from tests.e2e.scheduler_ahead import ahead_of_the_next_turn, restart_on_a_shifted_clock
from tests.kafka_helpers import produce
from tests.observability import (
    ALERTS,
    alerts,
    grouped_aggregations,
    selector_labels,
    vector_selectors,
    without_thresholds,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: The labels the chart's PodMonitor gives a target of a release in namespace member-export (its jobLabel: the pods'
#: app.kubernetes.io/part-of, member-export whatever the release is called).
NAMESPACE = "member-export"
JOB = "member-export"
#: The dashboard's variables as the drill-down shows the export that met every kind of trouble.
VARIABLES = {"namespace": NAMESPACE, "definition": "to-flaky-partner", "profile": "flaky-partner"}
#: How often the test's Prometheus scrapes the services and evaluates the rules (it was 1 s). The setup's waits count
#: scrapes (a step waits until a few samples are held before the next restarts a service): they shrink with it.
SCRAPE_SECONDS = 0.5
#: The step of a range query: two scrapes, as before (an alert that fired for a few scrapes falls on a step).
STEP_SECONDS = 2 * SCRAPE_SECONDS
#: Wider than Grafana's $__rate_interval for this scrape interval and step (4 scrapes: 2 s); a rate over 30 samples.
RATE_INTERVAL = "15s"

#: flaky-partner's rate limit is 50/s: its six 429s in a row halve it down to its floor, 5% of it, and each success
#: gives a tenth back. At 10/s, the floor's 0.5/s made its 200 members take 23 s; at 50/s (a 2.5/s floor) the
#: same 429s slow the same rate limiter, and the run takes about 5 s.
EXTRA_MANIFEST = """
kind: ConnectionProfile
name: flaky-partner
spec: {{base_url: "{flaky}", rate_limit: {{requests_per_second: 50, burst: 2}}}}
---
kind: ConnectionProfile
name: slow-partner
spec: {{base_url: "{slow}", rate_limit: {{max_in_flight: 1}}}}
---
kind: SavedQuery
name: first-two-hundred
spec: {{sql: "SELECT id, email FROM members WHERE id <= 200", key_column: id}}
---
kind: SavedQuery
name: leavers
spec: {{sql: "SELECT id, email FROM leavers", key_column: id}}
---
kind: HttpTemplate
name: flaky-small
spec: {{query: first-two-hundred, profile: flaky-partner, path: /v1/members, batch_size: 10}}
---
kind: HttpTemplate
name: slow-small
spec: {{query: first-hundred, profile: slow-partner, path: /v1/members, batch_size: 10}}
---
kind: HttpTemplate
name: leavers-to-good
spec: {{query: leavers, profile: good-partner, path: /v1/members, batch_size: 50}}
---
kind: ExportDefinition
name: to-flaky-partner
spec:
  query: first-two-hundred
  template: flaky-small
  notifications: {{error: {{enabled: true, recipients: [oncall@example.com]}}}}
---
kind: ExportDefinition
name: leavers-export
spec:
  query: leavers
  template: leavers-to-good
  notifications: {{error: {{enabled: true, recipients: [oncall@example.com]}}}}
"""

#: The two scheduled definitions, applied once the exports above are done: applied with them, a real turn of the
#: minute during those exports (one setup in three) fired every-minute-slow, whose ten 3 s requests one at a time held
#: the dispatcher's round, and the runs behind it, for 30 s.
SCHEDULED_MANIFEST = """
kind: ExportDefinition
name: every-minute
spec:
  query: first-hundred
  template: good-small
  schedule: {enabled: true, repeat: {cron: "* * * * *"}}
  notifications: {error: {enabled: true, recipients: [oncall@example.com]}}
---
kind: ExportDefinition
name: every-minute-slow
spec:
  query: first-hundred
  template: slow-small
  schedule: {enabled: true, repeat: {cron: "* * * * *"}, overlap: skip}
  notifications: {error: {enabled: true, recipients: [oncall@example.com]}}
"""


@dataclass
class Observed:
    """The Prometheus that watched the export, the export's time span and where each service's /metrics is."""

    prometheus: PrometheusServer
    start: float
    end: float
    metrics_ports: dict[str, int]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.prometheus.api("query", query=expr, time=f"{at or self.end:.3f}")["result"]
        return result

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        data = self.prometheus.api(
            "query_range", query=expr, start=f"{self.start:.3f}", end=f"{self.end:.3f}", step=f"{STEP_SECONDS}"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, selector: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.prometheus.api(
            "series", **{"match[]": selector, "start": f"{self.start:.3f}", "end": f"{self.end:.3f}"}
        )
        return found


def _scrape_config(ports: dict[str, int]) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": f"{int(SCRAPE_SECONDS * 1000)}ms",
            "scrape_timeout": f"{int(SCRAPE_SECONDS * 1000)}ms",
            "evaluation_interval": f"{int(SCRAPE_SECONDS * 1000)}ms",
        },
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        "labels": {
                            "namespace": NAMESPACE,
                            "container": service,
                            "pod": f"member-export-{service}-0",
                            "endpoint": "http" if service == "admin" else "metrics",
                        },
                    }
                    for service, port in ports.items()
                ],
            }
        ],
    }


def _scraped(prometheus: PrometheusServer, selector: str, samples: int = 3) -> bool:
    """True once Prometheus holds ``samples`` samples above 0 of a series ``selector`` matches (rates need two;
    the services start their counters at 0, so a series exists before anything happened)."""
    resolution = f"{int(SCRAPE_SECONDS * 1000)}ms"  # one point per scrape: a coarser one counts fewer samples
    counted = prometheus.api("query", query=f"count_over_time(({selector} > 0)[2m:{resolution}])")["result"]
    return any(float(series["value"][1]) >= samples for series in counted)


def _exportctl_ok(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    done = pipeline.exportctl(*args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def observed(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    work = tmp_path_factory.mktemp("prometheus")
    start = time.time()
    with (
        HttpReceiver(fail_first=4, throttle_first=6, reject_members=frozenset({7})) as flaky,
        HttpReceiver(delay=3.0) as slow,
        admin_server(
            tmp_path_factory.mktemp("admin"),
            pipeline.env["EXPORT_CATALOG_URL"],
            pipeline.bootstrap,
            pipeline.env["EXPORT_QUERY_STORE_URL"],
            topic_prefix=pipeline.env["EXPORT_TOPIC_PREFIX"],
        ) as admin,
    ):
        ports = {**pipeline.metrics_ports, "admin": int(admin.url.rsplit(":", 1)[1])}
        with PrometheusServer(_scrape_config(ports), work / "server") as prometheus:
            wait_until(
                lambda: all(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"]),
                timeout=60,
                what="Prometheus to scrape every service",
            )
            _export_one_of_everything(pipeline, admin, flaky, slow, work)
            _schedules_fired_skipped_then_missed(pipeline, prometheus, work)
            end = time.time()
            yield Observed(prometheus, start, end, ports)


def _export_one_of_everything(
    pipeline: Pipeline, admin: AdminServer, flaky: HttpReceiver, slow: HttpReceiver, work: Path
) -> None:
    store = make_engine(pipeline.env["EXPORT_QUERY_STORE_URL"])
    with store.begin() as connection:  # the leavers' table exists when the query is saved, not when it runs
        connection.execute(text("CREATE TABLE leavers (id INTEGER PRIMARY KEY, email TEXT)"))
        connection.execute(text("INSERT INTO leavers VALUES (1, 'gone@example.com')"))
    manifest = work / "more-exports.yaml"
    manifest.write_text(EXTRA_MANIFEST.format(flaky=flaky.url, slow=slow.url))
    applied = _exportctl_ok(pipeline, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    with store.begin() as connection:
        connection.execute(text("DROP TABLE leavers"))
    store.dispose()

    produce(pipeline.bootstrap, pipeline.topics.run_requests, [("garbage", b'{"definition": ["not", "a", "name"]')])
    flaky_run = _exportctl_ok(pipeline, "run", "to-flaky-partner", "--wait", "--timeout", "120")
    assert "completed_with_errors" in flaky_run.stdout, flaky_run.stdout + flaky_run.stderr
    broken = _exportctl_ok(pipeline, "run", "leavers-export", "--wait", "--timeout", "120")
    assert "failed" in broken.stdout, broken.stdout + broken.stderr
    for _ in range(2):  # the second run's rates show on counters the first one created (at its first count)
        good = _exportctl_ok(pipeline, "run", "to-good-partner", "--wait", "--timeout", "240")
        assert good.returncode == 0, good.stdout + good.stderr
    with admin.client("viewer") as api:
        assert api.get("/api/v1/runs").status_code == 200
        assert api.get("/api/v1/export-definitions").status_code == 200
        assert api.get("/api/v1/no-such-thing").status_code == 404
    with admin.client(None) as anonymous:
        assert anonymous.get("/api/v1/runs").status_code == 401


def _schedules_fired_skipped_then_missed(pipeline: Pipeline, prometheus: PrometheusServer, work: Path) -> None:
    """At one minute's turn every-minute fires and every-minute-slow, still running from a manual run, is skipped;
    then, with no catch-up window and no SMTP server, the next turn is missed by both and their error emails fail.
    Each step waits for Prometheus to hold what the step did before the next one restarts a service."""
    manifest = work / "scheduled-exports.yaml"
    manifest.write_text(SCHEDULED_MANIFEST)
    applied = _exportctl_ok(pipeline, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    # The shifted clock is read from the schedules' next instants: the scheduler must have synced both first.
    wait_until(
        lambda: (
            {"every-minute", "every-minute-slow"}
            <= {
                d.definition.name
                for d in pipeline.catalog.scheduling.due_schedules(datetime.now(UTC) + timedelta(days=1))
            }
        ),
        timeout=60,
        what="the scheduler to sync every-minute and every-minute-slow",
    )
    slow_run = _exportctl_ok(pipeline, "run", "every-minute-slow")  # ten 3 s requests one at a time
    assert slow_run.returncode == 0, slow_run.stderr
    wait_until(
        lambda: bool(pipeline.catalog.runs.active_runs(["every-minute-slow"])),
        timeout=60,
        what="the manual run of every-minute-slow under way",
    )
    restart_on_a_shifted_clock(pipeline, "every-minute")
    wait_until(
        lambda: (
            _scraped(prometheus, 'member_export_scheduler_runs_fired_total{definition="every-minute"}')
            and _scraped(prometheus, 'member_export_scheduler_runs_skipped_total{definition="every-minute-slow"}')
        ),
        timeout=60,
        what="every-minute fired and every-minute-slow skipped",
    )
    # Both stop before either starts: the missed runs' emails go to the notifier without an SMTP server.
    pipeline.stop_services("notifier", "scheduler")
    pipeline.start_services(
        {
            "notifier": {"EXPORT_SMTP_PORT": str(free_port()), "EXPORT_SMTP_MAX_ATTEMPTS": "1"},
            "scheduler": {
                "EXPORT_SCHEDULER_CATCH_UP_SECONDS": "0",
                **ahead_of_the_next_turn(pipeline.catalog, "every-minute", past=1.0),
            },
        },
    )
    # The fired run of every-minute was held by the extractor until its instant (on the scheduler's first clock,
    # seconds away); its start gives the start delay panel a value.
    wait_until(
        lambda: (
            _scraped(prometheus, 'member_export_scheduler_runs_missed_total{definition="every-minute"}', 5)
            and _scraped(prometheus, 'member_export_notifier_emails_failed_total{kind="error"}', 5)
            and _scraped(prometheus, "member_export_extractor_scheduled_start_delay_seconds_count")
        ),
        timeout=120,
        what="every-minute missed and its error email failed, and its fired run started at its instant",
    )


# --- The rules in the server ---------------------------------------------------------------------------------


def test_prometheus_loaded_every_alert_and_evaluates_it_without_error(observed: Observed) -> None:
    loaded = {
        rule["name"]: rule
        for group in observed.prometheus.api("rules", type="alert")["groups"]
        for rule in group["rules"]
    }
    assert set(loaded) == {a["alert"] for a in alerts()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def test_the_alerts_the_export_called_for_fire(observed: Observed) -> None:
    # Fired at any time during the scenario (Prometheus' ALERTS series): some resolve before its end, e.g. after
    # the notifier's restart, whose counters start again at 0.
    history = observed.query_range('ALERTS{alertstate="firing"}')
    firing = {(a["metric"]["alertname"], a["metric"].get("definition", "")) for a in history}
    expected = {
        ("MemberExportRunsFailing", "leavers-export"),
        ("MemberExportRunsCompletedWithErrors", "to-flaky-partner"),
        ("MemberExportMembersDeadLettered", "to-flaky-partner"),
        ("MemberExportRecordsDeadLettered", ""),
        ("MemberExportScheduledRunsMissed", "every-minute"),
        ("MemberExportEmailsFailing", ""),
    }
    assert expected <= firing, f"not firing: {sorted(expected - firing)}"
    names = {name for name, _ in firing}
    assert not names & {"MemberExportServiceDown", "MemberExportTargetDown", "MemberExportDeadLetterWritesFailing"}


# --- Every alert's and every panel's PromQL names what the services expose ------------------------------------


def _assert_selectors_match(observed: Observed, where: str, expr: str) -> None:
    for selector in vector_selectors(expr):
        name = selector.name
        assert name, f"{where}: {selector} names no metric"
        assert observed.series(name), f"{where}: no service exposes {name}"
        for matcher in selector.matchers.matchers:
            if matcher.name != "__name__":
                labelled = observed.series(f'{name}{{{matcher.name}!=""}}')
                assert labelled, f"{where}: no series of {name} has a label {matcher.name!r}"
        # Without its offset (the series API takes selectors only): ``x offset 1h`` names the series of ``x``.
        matchers = ", ".join(f"{label}{matcher}" for label, matcher in selector_labels(selector).items())
        plain = f"{name}{{{matchers}}}"
        assert observed.series(plain), f"{where}: no series matches {plain}"


def _assert_grouping_labels_present(where: str, expr: str, evaluate: Any) -> None:
    for aggregation, labels in grouped_aggregations(expr):
        result = evaluate(aggregation)
        for label in labels:
            assert any(s["metric"].get(label) for s in result), f"{where}: no series of {aggregation} has {label!r}"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_expression_returns_series(observed: Observed, alert: dict[str, Any]) -> None:
    name, expr = alert["alert"], alert["expr"]
    _assert_selectors_match(observed, name, expr)
    for part in without_thresholds(expr):
        assert observed.query(part), f"{name}: {part} returns no series at the end of the export"
    _assert_grouping_labels_present(name, expr, observed.query)


@pytest.mark.parametrize("target", list(targets(load_dashboard())), ids=lambda t: f"{t.panel}/{t.ref_id}")
def test_every_dashboard_query_returns_series(observed: Observed, target: Any) -> None:
    expr = expand(target.expr, VARIABLES, RATE_INTERVAL)
    where = f"panel {target.panel!r} query {target.ref_id}"
    _assert_selectors_match(observed, where, expr)
    result = observed.query_range(expr)
    assert result, f"{where}: {expr} returns no series over the export"
    for series in result:
        shown = legend(target.legend, series["metric"])
        assert shown, f"{where}: an empty legend from {series['metric']}"
        assert "{{" not in shown, f"{where}: legend {target.legend!r} from {series['metric']}"
    for label in _legend_labels(target.legend):
        assert any(s["metric"].get(label) for s in result), f"{where}: its legend names {label!r}, no series has it"
    _assert_grouping_labels_present(where, expr, observed.query_range)


def _legend_labels(fmt: str) -> list[str]:
    return re.findall(r"\{\{\s*(\w+)\s*\}\}", fmt)


def test_the_fire_delay_panel_shows_the_start_delay_of_the_fired_run(observed: Observed) -> None:
    """The panel's first query is the delay users see, and it has a value: not only the NaN of empty buckets."""
    [panel] = [p for p in load_dashboard()["panels"] if p["title"].startswith("Fire delay")]
    started = panel["targets"][0]["expr"]
    assert "member_export_extractor_scheduled_start_delay_seconds_bucket" in started
    values = [float(v) for s in observed.query_range(expand(started, VARIABLES, RATE_INTERVAL)) for _, v in s["values"]]
    assert any(v == v for v in values), f"{started} is NaN over the whole export"  # NaN != NaN


def test_the_dashboard_variables_list_the_exports_and_partners_that_ran(observed: Observed) -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    for name, expected in (
        ("namespace", {NAMESPACE}),
        ("definition", {"to-flaky-partner", "leavers-export", "to-good-partner"}),
        ("profile", {"flaky-partner", "good-partner"}),
    ):
        # The selector of label_values(selector, name), with the namespace picked (definitions and profiles are
        # those of the install shown).
        query = expand(variables[name]["definition"], VARIABLES, RATE_INTERVAL)
        metric = query.removeprefix("label_values(").rsplit(",", 1)[0]
        listed = observed.prometheus.api(
            f"label/{name}/values",
            **{"match[]": metric, "start": f"{observed.start:.3f}", "end": f"{observed.end:.3f}"},
        )
        assert expected <= set(listed), f"${name} lists {listed}"


def test_lag_per_definition_and_per_profile_series_during_the_export(observed: Observed) -> None:
    lag = observed.query_range('member_export_consumer_lag{topic=~".*member-batches.*", group!=""}')
    assert {s["metric"]["service"] for s in lag} == {"dispatcher"}
    assert {s["metric"]["partition"] for s in lag} == {"0", "1", "2"}  # EXPORT_TOPIC_PARTITIONS=3
    delivered = observed.query_range(
        'member_export_dispatcher_members_delivered_total{definition="to-good-partner", profile="good-partner"}'
    )
    assert max(float(v) for s in delivered for _, v in s["values"]) == 20_000  # two runs of 10,000
    classes = {
        s["metric"]["status_class"]
        for s in observed.query_range('member_export_dispatcher_requests_total{profile="flaky-partner"}')
    }
    assert {"2xx", "4xx", "5xx", "429"} <= classes


# --- The services' expositions -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["scheduler", "extractor", "dispatcher", "notifier", "admin"])
def test_promtool_check_metrics_finds_nothing_on_the_live_metrics(observed: Observed, service: str) -> None:
    exposition = httpx.get(f"http://127.0.0.1:{observed.metrics_ports[service]}/metrics", timeout=10).text
    assert "member_export_build_info" in exposition
    checked = subprocess.run(
        [str(prometheus_tools().promtool), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout


# --- The picture -----------------------------------------------------------------------------------------------


def test_the_dashboard_picture_is_drawn_from_this_prometheus(observed: Observed, tmp_path: Path) -> None:
    """``make dashboard-picture`` sets MEMBER_EXPORT_DASHBOARD_PICTURE=docs/dashboard.png to keep it."""
    out = Path(os.environ.get("MEMBER_EXPORT_DASHBOARD_PICTURE") or tmp_path / "dashboard.png")
    drawn = render(observed.prometheus.url, observed.start, observed.end, out)
    header = drawn.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 1500, width
    assert height >= 1500, height
