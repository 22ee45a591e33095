"""The alert rules and the dashboard, checked by the real tools: Debian's promtool (``check rules`` on the plain
file and on the chart's rendered PrometheusRule, ``test rules`` with alerts.test.yaml, which makes every alert fire
and stay quiet), helm for the chart's PrometheusRule and dashboard ConfigMap, and the runbook each alert links to.

Whether the services expose what the rules and panels name is tests/e2e/test_prometheus_dashboards.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from devtools.dashboard_picture import GRID_COLUMNS, expand, load_dashboard, panels, targets
from devtools.prometheus import prometheus_tools
from tests.chart import CHART, render
from tests.observability import (
    ALERTS,
    ALERTS_TESTS,
    RUNBOOK_BASE_URL,
    SEVERITIES,
    alerts,
    rule_groups,
    runbook_sections,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_tools().promtool


def _promtool(promtool: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def _rendered_rule(tmp_path: Path, **values: Any) -> dict[str, Any]:
    rendered = render(values={"prometheusRule": {"enabled": True, **values}}, tmp_dir=tmp_path)
    [rule] = rendered.of_kind("PrometheusRule")
    return rule


def test_promtool_accepts_the_plain_rules_file(promtool: Path) -> None:
    checked = _promtool(promtool, "check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_chart_prometheus_rule_is_the_plain_file_and_promtool_accepts_it(promtool: Path, tmp_path: Path) -> None:
    rule = _rendered_rule(tmp_path, labels={"release": "prometheus"})
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == rule_groups()  # the same groups, rules, expressions and annotations
    extracted = tmp_path / "from-chart.yaml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = _promtool(promtool, "check", "rules", extracted)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_chart_points_runbook_links_at_another_copy_when_told(tmp_path: Path) -> None:
    base = "https://wiki.example.com/sre/member-export/runbooks"
    rule = _rendered_rule(tmp_path, runbookBaseUrl=base)
    links = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert links == [a["annotations"]["runbook_url"].replace(RUNBOOK_BASE_URL, base) for a in alerts()]
    assert all(link.startswith(base + "#") for link in links)


def test_the_chart_ships_no_rule_and_no_dashboard_unless_switched_on(tmp_path: Path) -> None:
    rendered = render(values={}, tmp_dir=tmp_path)
    assert rendered.of_kind("PrometheusRule") == []
    assert [c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")] == ["member-export"]


def test_promtool_unit_tests_of_every_alert_pass(promtool: Path) -> None:
    tested = _promtool(promtool, "test", "rules", ALERTS_TESTS.name, cwd=ALERTS_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_where_it_stays_quiet() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in cases), f"{name} never fires in a test"
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), f"{name} is never quiet"
    assert {c["alertname"] for c in cases} == {a["alert"] for a in alerts()}


def test_the_unit_tests_catch_a_rule_that_no_longer_fires(promtool: Path, tmp_path: Path) -> None:
    """A threshold moved so far that the alert cannot fire: promtool test rules says which alert failed."""
    groups = rule_groups()
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == "MemberExportPartnerThrottling"]
    rule["expr"] = rule["expr"].replace("> 0.25", "> 0.75")
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(ALERTS_TESTS, tmp_path / ALERTS_TESTS.name)
    tested = _promtool(promtool, "test", "rules", ALERTS_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    failures = tested.stdout + tested.stderr
    assert "alertname: MemberExportPartnerThrottling" in failures
    assert "alertname: MemberExportPartnerErrors" not in failures  # only the broken rule


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    sections = runbook_sections()
    linked = []
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["annotations"]["summary"].strip(), name
        assert alert["annotations"]["description"].strip(), name
        url = alert["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE_URL, name
        assert anchor in sections, f"{name}: docs/runbooks.md has no section #{anchor}"
        assert anchor == name.lower(), f"{name}: its runbook section should be titled after it"
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in sections[anchor], f"{name}: its runbook section says nothing under {part}"
        linked.append(anchor)
    assert sorted(sections) == sorted(linked), "a runbook section no alert links to"


def test_each_alert_expression_parses_and_names_member_export_series_or_up() -> None:
    for alert in alerts():
        promql_parser.parse(alert["expr"])
        for line in alert["expr"].split():
            assert "export_" not in line or "member_export_" in line, f"{alert['alert']}: an old metric name"


# --- The dashboard -------------------------------------------------------------------------------------------


def test_every_dashboard_panel_has_a_query_that_parses() -> None:
    dashboard = load_dashboard()
    variables = {"namespace": "prod", "definition": "nightly", "profile": "acme", "datasource": "prometheus"}
    assert panels(dashboard), "a dashboard with no panel"
    for panel in panels(dashboard):
        queries = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert queries, f"panel {panel['title']!r} has no query"
        assert all(queries), f"panel {panel['title']!r} has an empty query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for target in targets(dashboard):
        expr = expand(target.expr, variables, "1m")
        promql_parser.parse(expr)
        assert "export_" not in expr.replace("member_export_", ""), f"{target.panel}: an old metric name"


def test_the_dashboard_is_a_current_grafana_model_with_its_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "member-export"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("definition", "profile"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(member_export_")
        assert variables[name]["definition"].endswith(f", {name})")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Pipeline overview",
        "Export drill-down: $definition",
        "Partner: $profile",
        "Scheduler",
        "Notifier",
        "Admin API",
    ]
    used = json.dumps(dashboard["panels"])
    assert "$definition" in used
    assert "$profile" in used


def test_dashboard_panels_fit_the_grid_and_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    ids = set()
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        assert panel["id"] not in ids
        ids.add(panel["id"])
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_config_map_carries_the_sidecar_label_and_the_dashboard(tmp_path: Path) -> None:
    values = {
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "monitoring",
            "label": "grafana_dashboard",
            "labelValue": "1",
            "annotations": {"grafana_folder": "Exports"},
        }
    }
    rendered = render(values=values, tmp_dir=tmp_path)
    config_map = rendered.named("ConfigMap", "member-export-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Exports"}
    assert json.loads(config_map["data"]["member-export.json"]) == load_dashboard()
    assert (CHART / "dashboards" / "member-export.json").read_text().strip() == config_map["data"]["member-export.json"]
