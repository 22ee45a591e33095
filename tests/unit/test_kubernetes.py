"""The Kubernetes manifests agree with the code: real services, real settings, consistent ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.admin.settings import AdminSettings
from services.dispatcher.settings import DispatcherSettings
from services.extractor.settings import ExtractorSettings
from services.notifier.settings import NotifierSettings
from services.scheduler.settings import SchedulerSettings
from shared.domain.secret_references import DEFAULT_DIRECTORIES

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SETTINGS = {
    "scheduler": SchedulerSettings,
    "extractor": ExtractorSettings,
    "dispatcher": DispatcherSettings,
    "notifier": NotifierSettings,
    "admin": AdminSettings,
}


def _variables(settings: Any) -> set[str]:
    return {f"EXPORT_{name.upper()}" for name in settings.model_fields}


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((KUBERNETES / resource).read_text()) if d]
    return documents


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents() if d["kind"] == "Deployment"}


def _keys(kind: str, name: str) -> set[str]:
    [document] = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return set(document.get("data") or document.get("stringData") or {})


def _secret_variables(deployment: dict[str, Any]) -> set[str]:
    """The variables a deployment's container gets from Secrets."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {
        key
        for source in container.get("envFrom", [])
        if "secretRef" in source
        for key in _keys("Secret", source["secretRef"]["name"])
    }


def test_every_service_has_a_deployment_that_runs_it():
    deployments = _deployments()
    assert set(deployments) == {f"member-export-{service}" for service in SETTINGS}
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        module = container["args"][-1]
        assert container["args"][:2] == ["python", "-m"]
        assert (ROOT / module.replace(".", "/") / "__main__.py").exists(), name
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )


def test_every_variable_the_manifests_set_is_a_setting_of_the_service_that_reads_it():
    shared = _keys("ConfigMap", "member-export")
    known_anywhere = set().union(*(_variables(s) for s in SETTINGS.values()))
    assert shared - known_anywhere == set()  # a typo would be silently ignored by pydantic-settings
    for name, deployment in _deployments().items():
        service = name.removeprefix("member-export-")
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        own = {variable["name"] for variable in container.get("env", [])}
        assert own - _variables(SETTINGS[service]) == set(), name


def test_each_service_gets_only_the_secrets_it_reads():
    """A secret goes only where it is a setting: the dispatcher, whose requests a profile's references shape,
    holds no member-store or SMTP credentials for a reference to reach (issue 12, finding 9)."""
    deployments = _deployments()
    for name, deployment in deployments.items():
        service = name.removeprefix("member-export-")
        assert _secret_variables(deployment) - _variables(SETTINGS[service]) == set(), name
    assert _secret_variables(deployments["member-export-dispatcher"]) == {
        "EXPORT_CATALOG_URL",
        "EXPORT_CATALOG_ENCRYPTION_KEYS",
    }
    holding_keys = {n for n, d in deployments.items() if "EXPORT_CATALOG_ENCRYPTION_KEYS" in _secret_variables(d)}
    assert holding_keys == {"member-export-admin", "member-export-dispatcher"}  # the services reading profiles


def test_partner_secrets_are_files_of_the_dispatcher_alone_in_the_allowed_directory():
    [config] = [d for d in _documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "member-export"]
    directories = config["data"].get("EXPORT_ALLOWED_SECRET_DIRS", DEFAULT_DIRECTORIES).split(",")
    mounting = {}
    for name, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        [container] = pod["containers"]
        for mount in container.get("volumeMounts", []):
            if volumes[mount["name"]].get("secret", {}).get("secretName") == "member-export-partner-secrets":
                mounting[name] = mount
    assert list(mounting) == ["member-export-dispatcher"]
    mount = mounting["member-export-dispatcher"]
    assert mount["readOnly"] is True
    assert mount["mountPath"] in directories


def test_no_pod_holds_a_service_account_token():
    for name, deployment in _deployments().items():
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name


def test_ports_probes_and_scrape_annotations_agree():
    for name, deployment in _deployments().items():
        template = deployment["spec"]["template"]
        [container] = template["spec"]["containers"]
        env = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
        port = str(env.get("EXPORT_METRICS_PORT") or env.get("EXPORT_ADMIN_PORT"))
        assert [p["containerPort"] for p in container["ports"]] == [int(port)], name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == port, name
        named = container["ports"][0]["name"]
        assert container["readinessProbe"]["httpGet"]["port"] == named
        assert container["livenessProbe"]["httpGet"]["port"] == named
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_consumers_are_restarted_when_wedged_and_unready_while_waiting_out_a_dependency():
    # Liveness and readiness are different questions (shared/health.py): a service riding out a catalog
    # outage must not be restarted, and a wedged loop must be, whatever /metrics answers.
    for name in ("scheduler", "extractor", "dispatcher", "notifier"):
        [container] = _deployments()[f"member-export-{name}"]["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name


def test_the_image_runs_as_the_user_the_manifests_require():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile
    for deployment in _deployments().values():
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
