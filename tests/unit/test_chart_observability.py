"""What the chart's monitoring and its migration Job give a cluster, whatever the release is called: the job the
Prometheus Operator gives the services' targets is the one the service-down alerts select, the dashboard shows one
install (namespace) at a time, and the migration hook runs where the services may run.

The same with the real tools (promtool, a Prometheus server): tests/integration/test_observability_targets.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.dashboard_picture import expand, load_dashboard, targets
from tests.chart import render
from tests.observability import alerts, matches, operator_job, selector_labels, vector_selectors

#: (release, namespace, values): the chart's own names, and names that lack "member-export" or cut it short.
RELEASE_NAMES = {
    "default": ("member-export", "member-export", {}),
    "fullnameOverride": ("prod", "exports", {"fullnameOverride": "prod-exporter"}),
    "nameOverride": ("exports", "exports", {"nameOverride": "exporter"}),
    "long release name": ("loyalty-platform-exports-production-eu-west-1-blue", "exports", {}),
}


def _pods(rendered: Any) -> dict[str, dict[str, str]]:
    """Each service's pod labels, by its component label."""
    return {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["metadata"][
            "labels"
        ]
        for d in rendered.of_kind("Deployment")
    }


@pytest.mark.parametrize("names", RELEASE_NAMES, ids=list(RELEASE_NAMES))
def test_the_service_down_alerts_select_every_service_target_whatever_the_release_names(
    names: str, tmp_path: Path
) -> None:
    release, namespace, values = RELEASE_NAMES[names]
    rendered = render(
        values={**values, "podMonitor": {"enabled": True}}, tmp_dir=tmp_path, release=release, namespace=namespace
    )
    [monitor] = rendered.of_kind("PodMonitor")
    selectors = [selector_labels(s) for a in alerts() for s in vector_selectors(a["expr"]) if s.name == "up"]
    assert len(selectors) == 2, "the target-down and service-down alerts"
    pods = _pods(rendered)
    assert sorted(pods) == sorted(["scheduler", "extractor", "dispatcher", "notifier", "admin"])
    for service, labels in pods.items():
        job = operator_job(monitor, namespace, labels)
        assert job == "member-export", f"{service}: the operator would give job {job!r}"
        assert all(matches(s["job"], job) for s in selectors), f"{service}: job {job!r} is not selected"


# --- The dashboard: one namespace at a time -----------------------------------------------------------------------

#: The variables' values a user picks: one namespace; every definition and profile.
PICKED = {"namespace": "exports-blue", "definition": ".+", "profile": ".+", "datasource": "prometheus"}


def test_the_dashboard_picks_one_namespace_and_lists_its_definitions_and_profiles() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    assert namespace["datasource"]["uid"] == "${datasource}"
    assert namespace["definition"] == namespace["query"]["query"]
    assert namespace["definition"].startswith("label_values(member_export_")
    assert namespace["definition"].endswith(", namespace)")
    # One install at a time: an "All" would add two installs' series up again.
    assert (namespace["multi"], namespace["includeAll"]) == (False, False)
    names = [v["name"] for v in load_dashboard()["templating"]["list"]]
    assert names.index("namespace") < names.index("definition")
    for name in ("definition", "profile"):
        assert '{namespace=~"$namespace"}' in variables[name]["definition"], name
        assert variables[name]["definition"] == variables[name]["query"]["query"], name


def test_every_dashboard_query_reads_the_picked_namespace_alone() -> None:
    queried = 0
    for target in targets(load_dashboard()):
        expr = expand(target.expr, PICKED, "1m")
        for selector in vector_selectors(expr):
            labels = selector_labels(selector)
            assert labels.get("namespace") == f'=~"{PICKED["namespace"]}"', f"{target.panel}: {selector}"
            queried += 1
    assert queried > 40  # every selector of every panel


# --- The migration Job runs where the services may -------------------------------------------------------------

#: A cluster whose export nodes are tainted and labelled for them, the pods labelled and annotated for the mesh.
PLACED: dict[str, Any] = {
    "nodeSelector": {"pool": "exports"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "exports", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    },
    "priorityClassName": "batch-high",
    "podLabels": {"team": "loyalty"},
    "podAnnotations": {"sidecar.istio.io/inject": "false"},
}
PLACEMENT = ("nodeSelector", "tolerations", "affinity", "priorityClassName")


def test_the_migration_job_is_placed_labelled_and_annotated_as_the_services(tmp_path: Path) -> None:
    rendered = render(values=PLACED, tmp_dir=tmp_path)
    [job] = rendered.of_kind("Job")
    template = job["spec"]["template"]
    for field in PLACEMENT:
        assert template["spec"].get(field) == PLACED[field], field
    assert template["metadata"]["labels"].items() >= PLACED["podLabels"].items()
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "migrations"
    assert template["metadata"]["annotations"] == PLACED["podAnnotations"]
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]
        assert {f: pod["spec"].get(f) for f in PLACEMENT} == {f: template["spec"].get(f) for f in PLACEMENT}
        assert pod["metadata"]["labels"].items() >= PLACED["podLabels"].items()
        assert pod["metadata"]["annotations"].items() >= PLACED["podAnnotations"].items()


def test_without_placement_values_the_job_has_none_and_not_the_services_anti_affinity(tmp_path: Path) -> None:
    rendered = render(values={}, tmp_dir=tmp_path)
    [job] = rendered.of_kind("Job")
    template = job["spec"]["template"]
    assert not {*PLACEMENT, "topologySpreadConstraints"} & template["spec"].keys()
    assert "annotations" not in template["metadata"]
    for deployment in rendered.of_kind("Deployment"):  # the services spread their replicas by default
        assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
