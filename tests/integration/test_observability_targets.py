"""The targets' labels, with the real tools: the service-down alerts fire (promtool test rules) on the job the chart's
PodMonitor gives a release of any name, the scrape configuration for a Prometheus without the operator
(files/scrape-config.yaml) gives a real Prometheus server's targets the same labels, and the dashboard reads one
install of two that one Prometheus scrapes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.dashboard_picture import expand, load_dashboard, targets
from devtools.processes import free_port, wait_until
from devtools.prometheus import PrometheusServer, prometheus_tools
from tests.chart import CHART, render
from tests.observability import ALERTS, RUNBOOK_BASE_URL, operator_job

pytestmark = pytest.mark.integration

SCRAPE_CONFIG = CHART / "files" / "scrape-config.yaml"


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    (tmp_path / "case.test.yaml").write_text(
        yaml.safe_dump({"rule_files": [ALERTS.name], "evaluation_interval": "1m", "tests": tests})
    )
    promtool = prometheus_tools().promtool
    return subprocess.run(
        [str(promtool), "test", "rules", "case.test.yaml"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_every_service_down_fires_for_a_release_whose_names_lack_member_export(tmp_path: Path) -> None:
    """fullnameOverride prod-exporter: the operator's job for each pod is what the alerts select, so each service
    with every replica down is a critical alert naming it."""
    namespace = "exports"
    rendered = render(
        values={"fullnameOverride": "prod-exporter", "podMonitor": {"enabled": True}},
        tmp_dir=tmp_path,
        release="prod",
        namespace=namespace,
    )
    [monitor] = rendered.of_kind("PodMonitor")
    series, expected = [], []
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = labels["app.kubernetes.io/component"]
        job = operator_job(monitor, namespace, labels)
        pod = f"{deployment['metadata']['name']}-0"
        series.append(
            {
                "series": f'up{{job="{job}", namespace="{namespace}", container="{service}", pod="{pod}"}}',
                "values": "0x20",
            }
        )
        expected.append(
            {
                "exp_labels": {"severity": "critical", "job": job, "namespace": namespace, "container": service},
                "exp_annotations": {
                    "summary": f"Every replica of the {service} is down",
                    "description": f"No replica of the {service} in namespace {namespace} has answered a scrape for 5"
                    " minutes: that stage of the pipeline is stopped.",
                    "runbook_url": f"{RUNBOOK_BASE_URL}#memberexportservicedown",
                },
            }
        )
    assert len(expected) == 5
    case = {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "15m", "alertname": "MemberExportServiceDown", "exp_alerts": expected}],
    }
    tested = _promtool_test(tmp_path, [case])
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_counts_the_lease_holders_of_the_namespace_picked_not_of_two_installs(tmp_path: Path) -> None:
    [leaders] = [t for t in targets(load_dashboard()) if t.panel == "Replicas holding the lease"]
    expr = expand(leaders.expr, {"namespace": "exports-blue"}, "1m")
    case = {
        "interval": "1m",
        "input_series": [
            {"series": f'member_export_scheduler_leader{{namespace="{ns}", pod="{ns}-scheduler-{i}"}}', "values": v}
            for ns in ("exports-blue", "exports-green")
            for i, v in enumerate(("1x5", "0x5"))
        ],
        "promql_expr_test": [{"expr": expr, "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 1}]}],
    }
    tested = _promtool_test(tmp_path, [case])
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- Without the operator: the scrape configuration -------------------------------------------------------------


def _discovered(pod: str, namespace: str, container: str, port_name: str, part_of: str, port: int) -> dict[str, Any]:
    """A target as Kubernetes service discovery (role: pod) gives it: its address and its __meta_ labels."""
    return {
        "targets": [f"127.0.0.1:{port}"],
        "labels": {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_container_name": container,
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_part_of": part_of,
        },
    }


def test_the_scrape_configuration_gives_the_targets_the_labels_the_alerts_select(tmp_path: Path) -> None:
    """A real Prometheus runs the file's relabelling on targets shaped as its Kubernetes discovery gives them (this
    Prometheus, Debian's, is built without it: they are given as static targets with the same labels)."""
    [job] = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    assert list(job["kubernetes_sd_configs"]) == [{"role": "pod"}]
    ports = [free_port() for _ in range(4)]
    static = [
        _discovered("prod-exporter-dispatcher-7f9c-x2", "exports", "dispatcher", "metrics", "member-export", ports[0]),
        _discovered("prod-exporter-admin-5d4b-q8", "exports", "admin", "http", "member-export", ports[1]),
        _discovered("prod-exporter-dispatcher-7f9c-x2", "exports", "dispatcher", "debug", "member-export", ports[2]),
        _discovered("shop-api-1", "exports", "api", "metrics", "shop", ports[3]),
    ]
    as_static = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"} | {"static_configs": static}
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [as_static]}
    with PrometheusServer(config, tmp_path / "prometheus") as server:

        def active() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = server.api("targets", state="active")["activeTargets"]
            return found

        wait_until(lambda: len(active()) == 2, timeout=30, what="the scrape job's two targets")
        labels = sorted((t["labels"] for t in active()), key=lambda labels: labels["container"])
    assert labels == [
        {
            "job": "member-export",
            "instance": f"127.0.0.1:{ports[1]}",
            "namespace": "exports",
            "pod": "prod-exporter-admin-5d4b-q8",
            "container": "admin",
            "endpoint": "http",
        },
        {
            "job": "member-export",
            "instance": f"127.0.0.1:{ports[0]}",
            "namespace": "exports",
            "pod": "prod-exporter-dispatcher-7f9c-x2",
            "container": "dispatcher",
            "endpoint": "metrics",
        },
    ]
