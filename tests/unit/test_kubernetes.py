"""The chart's manifests agree with the code: real entry points, real settings, the secrets each service reads,
consistent ports; and the image they run is built as the chart expects (tests/unit/test_helm_chart.py holds
the chart to Kubernetes; tests/e2e/test_chart_run.py runs it).

The Helm chart (deploy/helm/member-export) is the one source of truth for Kubernetes: the former kustomize
base is gone, and with it its example Secrets.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kafka import codec as kafka_codec
from packaging.requirements import Requirement

from devtools.constraints import canonical, closure, runtime_requirements
from services.admin.settings import AdminSettings
from services.dispatcher.settings import DispatcherSettings
from services.extractor.settings import ExtractorSettings
from services.notifier.settings import NotifierSettings
from services.scheduler.settings import SchedulerSettings
from tests.chart import CI_VALUES, ROOT, SERVICES, Rendered, render

SETTINGS = {
    "scheduler": SchedulerSettings,
    "extractor": ExtractorSettings,
    "dispatcher": DispatcherSettings,
    "notifier": NotifierSettings,
    "admin": AdminSettings,
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _variables(settings: Any) -> set[str]:
    return {f"EXPORT_{name.upper()}" for name in settings.model_fields}


@pytest.fixture(scope="module", params=sorted(CI_VALUES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(CI_VALUES[request.param])


def _env(rendered: Rendered, service: str) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in rendered.container(service)["env"]}


def test_every_service_has_a_deployment_that_runs_its_entry_point(rendered: Rendered) -> None:
    deployments = rendered.deployments()
    assert set(deployments) == set(SERVICES)
    for service, deployment in deployments.items():
        container = rendered.container(service)
        assert container["command"] == [f"export-{service}"]
        assert SCRIPTS[f"export-{service}"] == f"services.{service}.__main__:main"
        assert "args" not in container
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )


def test_every_variable_the_chart_sets_is_a_setting_of_the_service_that_reads_it(rendered: Rendered) -> None:
    [config] = rendered.of_kind("ConfigMap")
    known_anywhere = set().union(*(_variables(s) for s in SETTINGS.values()))
    assert set(config["data"]) - known_anywhere == set()  # a typo would be silently ignored by pydantic-settings
    for service in SERVICES:
        own = {name for name in _env(rendered, service) if not name.startswith("PARTNER_")}
        assert own - _variables(SETTINGS[service]) == set(), service


def _secret_variables(rendered: Rendered, service: str) -> set[str]:
    return {
        name for name, variable in _env(rendered, service).items() if "secretKeyRef" in variable.get("valueFrom", {})
    }


def test_each_service_gets_only_the_secrets_it_reads(rendered: Rendered) -> None:
    """A secret goes only where it is a setting: the dispatcher, whose requests a profile's references shape,
    holds no member-store or SMTP credentials for a reference to reach (issue 12, finding 9)."""
    for service in SERVICES:
        container = rendered.container(service)
        assert [source for source in container["envFrom"] if "secretRef" in source] == [], service
        settings_secrets = {n for n in _secret_variables(rendered, service) if n.startswith("EXPORT_")}
        assert settings_secrets - _variables(SETTINGS[service]) == set(), service
    assert {n for n in _secret_variables(rendered, "dispatcher") if n.startswith("EXPORT_")} <= {
        "EXPORT_CATALOG_URL",
        "EXPORT_CATALOG_ENCRYPTION_KEYS",
    }
    holding_keys = {s for s in SERVICES if "EXPORT_CATALOG_ENCRYPTION_KEYS" in _secret_variables(rendered, s)}
    assert holding_keys in (set(), {"admin", "dispatcher"})  # the services reading profiles, when keys are set
    holding_store = {s for s in SERVICES if "EXPORT_QUERY_STORE_URL" in _secret_variables(rendered, s)}
    assert holding_store == {"extractor", "admin"}


def test_partner_secrets_are_files_of_the_dispatcher_and_notifier_alone_in_the_allowed_directory() -> None:
    rendered = render(CI_VALUES["production"])
    [config] = rendered.of_kind("ConfigMap")
    directories = config["data"]["EXPORT_ALLOWED_SECRET_DIRS"].split(",")
    mounting = {}
    for service, deployment in rendered.deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in rendered.container(service).get("volumeMounts", []):
            if volumes[mount["name"]].get("secret", {}).get("secretName") == "member-export-partner-secrets":
                mounting[service] = mount
    # The dispatcher's partner credentials, the notifier's webhook signing secrets: no other service reads them.
    assert sorted(mounting) == ["dispatcher", "notifier"]
    for mount in mounting.values():
        assert mount["readOnly"] is True
        assert mount["mountPath"] in directories


def test_the_admin_tokens_file_the_setting_names_is_the_mounted_secret(rendered: Rendered) -> None:
    container = rendered.container("admin")
    path = Path(_env(rendered, "admin")["EXPORT_ADMIN_TOKENS_FILE"]["value"])
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "admin-tokens"]
    assert path.parent == Path(mount["mountPath"])
    pod = rendered.deployments()["admin"]["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "admin-tokens"]
    assert volume["secret"]["secretName"] == "member-export-admin-tokens"
    assert path.name == "tokens.yaml"


def test_ports_probes_and_settings_agree(rendered: Rendered) -> None:
    for service in SERVICES:
        container = rendered.container(service)
        env = _env(rendered, service)
        port = env["EXPORT_ADMIN_PORT" if service == "admin" else "EXPORT_METRICS_PORT"]["value"]
        assert [p["containerPort"] for p in container["ports"]] == [int(port)], service
        named = container["ports"][0]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == named, (service, probe)
    [service_object] = rendered.of_kind("Service")
    assert service_object["spec"]["ports"][0]["targetPort"] == rendered.container("admin")["ports"][0]["name"]


# --- The image ---------------------------------------------------------------------------------------------


def _stages() -> list[str]:
    """The Dockerfile's stages, each its text from FROM to the next FROM."""
    return re.split(r"(?m)^(?=FROM )", DOCKERFILE)[1:]


def test_the_image_is_built_in_two_stages_and_runs_as_the_non_root_user_the_chart_requires(rendered: Rendered) -> None:
    build, runtime = _stages()
    assert re.match(r"FROM \S+ AS build\n", build)
    assert re.match(r"FROM \S+ AS runtime\n", runtime)
    [user] = re.findall(r"(?m)^USER (\d+):(\d+)$", runtime)
    uid, gid = map(int, user)
    assert uid > 10000
    assert gid > 10000
    for name, pod in rendered.pod_specs().items():
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid), name


def test_the_image_installs_pinned_runtime_dependencies_only() -> None:
    build, runtime = _stages()
    assert "pip wheel --wheel-dir /wheels --constraint constraints.txt ." in build
    assert "pip install --no-index --find-links /wheels --constraint /tmp/constraints.txt member-export" in runtime
    assert "COPY --from=build /wheels /wheels" in runtime
    copied = re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", DOCKERFILE)
    sources = {source for line in copied for source in line.split()}
    assert sources == {"pyproject.toml", "README.md", "constraints.txt", "shared", "services"}  # no devtools, tests
    assert "[dev]" not in DOCKERFILE
    assert "gcc" not in DOCKERFILE
    assert "pip uninstall --yes pip" in runtime


def test_the_image_default_command_is_an_entry_point() -> None:
    [command] = re.findall(r'(?m)^CMD \["([^"]+)"\]$', DOCKERFILE)
    assert command in SCRIPTS


def test_constraints_pin_every_runtime_dependency_exactly_and_nothing_of_the_dev_extra() -> None:
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in pins), "canonical names"
    assert set(pins) == set(closure(runtime_requirements())), "regenerate: python -m devtools.constraints"
    for requirement in runtime_requirements():
        assert requirement.specifier.contains(pins[canonical(requirement.name)], prereleases=True), requirement
    dev = {canonical(Requirement(text).name) for text in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    # A dev tool that a runtime package needs too (requests: the OTLP exporter's) is pinned as the runtime's.
    dev_only = dev - set(closure(runtime_requirements()))
    assert dev_only & set(pins) == set()


def test_the_compression_codecs_the_settings_offer_are_runtime_dependencies_and_work() -> None:
    """EXPORT_KAFKA_COMPRESSION offers zstd and snappy: their codecs are installed with the package (and in the
    image), and compress and decompress with kafka-python, as its producer and consumers do."""
    offered = set(SchedulerSettings.model_fields["kafka_compression"].annotation.__args__)
    codec_packages = {"lz4": "lz4", "zstd": "zstandard", "snappy": "python-snappy", "gzip": None, "none": None}
    runtime = {canonical(r.name) for r in runtime_requirements()}
    assert {p for c, p in codec_packages.items() if c in offered and p} <= runtime
    payload = b'{"id": 1, "email": "a@example.com"}' * 100
    for codec in offered - {"none"}:
        compress = getattr(kafka_codec, f"{codec}_encode")
        decompress = getattr(kafka_codec, f"{codec}_decode")
        assert getattr(kafka_codec, f"has_{codec}")(), codec
        assert decompress(compress(payload)) == payload, codec
