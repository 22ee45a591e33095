"""The Helm chart as a platform team runs it: the Strimzi resources a current operator serves (validated against
its CRDs, vendored under tests/fixtures/strimzi), where they go, topics that outlive the release, names that fit
a long release name, the admin API's metrics behind a NetworkPolicy, and the extension points (egress rules,
volumes, the SMTP CA) an operator reaches for.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.prerequisites import go_tool
from services.notifier.settings import NotifierSettings
from tests.chart import CHART, CI_VALUES, SERVICES, Rendered, helm, render
from tests.unit.test_helm_chart import KUBERNETES_VERSIONS, _kubeconform

#: Strimzi 1.2.0's CRDs of the two kinds the chart makes (their header says where they come from).
STRIMZI_CRDS = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "strimzi").glob("*-Crd-*.yaml"))
STRIMZI_KINDS = ("KafkaTopic", "KafkaUser")
#: Helm's longest release name (53 characters), not holding the chart's name.
LONG_RELEASE = "loyalty-platform-exports-production-eu-west-1-blue-42"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _strict(schema: Any) -> None:
    """A CRD's structural schema as the API server applies it: unknown fields are refused where properties are
    listed (unless preserved), and int-or-string takes either (kubeconform's openapi2jsonschema -strict does this)."""
    if isinstance(schema, dict):
        preserved = schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and not preserved and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        if schema.pop("x-kubernetes-int-or-string", False):
            schema.pop("type", None)
            schema["oneOf"] = [{"type": "string"}, {"type": "integer"}]
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)


def _strimzi_schemas(directory: Path) -> Path:
    """kubeconform schemas (``<kind>-<group>-<version>.json``) of every version the vendored CRDs serve."""
    for crd_file in STRIMZI_CRDS:
        crd = yaml.safe_load(crd_file.read_text())
        kind, group = crd["spec"]["names"]["kind"].lower(), crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = version["schema"]["openAPIV3Schema"]
                _strict(schema)
                schema["properties"]["metadata"] = {"type": "object"}
                (directory / f"{kind}-{group}-{version['name']}.json").write_text(json.dumps(schema))
    return directory


def _validate_strimzi(rendered: Rendered, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    resources = [d for d in rendered.documents if d["kind"] in STRIMZI_KINDS]
    manifests = tmp_path / "strimzi.yaml"
    manifests.write_text(yaml.safe_dump_all(resources))
    schemas = _strimzi_schemas(tmp_path / "schemas")
    return subprocess.run(
        [
            str(go_tool("kubeconform")),
            "-strict",
            "-summary",
            "-schema-location",
            f"{schemas}/{{{{.ResourceKind}}}}-{{{{.Group}}}}-{{{{.ResourceAPIVersion}}}}.json",
            str(manifests),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _render_release(release: str, *values_files: Path, sets: tuple[str, ...] = ()) -> Rendered:
    args = ["template", release, str(CHART), "--namespace", "member-export"]
    for path in values_files:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    text = helm(*args).stdout
    return Rendered(text, [d for d in yaml.safe_load_all(text) if d])


# --- Strimzi --------------------------------------------------------------------------------------------------

SCRAM = {
    "kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-512"}},
    "strimzi": {"users": {"authentication": "scram-sha-512"}, "topics": {"config": {"retention.ms": 604800000}}},
}


@pytest.mark.parametrize("values", [{}, SCRAM], ids=["tls", "scram-sha-512"])
def test_strimzi_resources_are_what_a_current_operator_serves(values: dict[str, Any], tmp_path: Path) -> None:
    """Strimzi 1.0 and later serve kafka.strimzi.io/v1 alone: a v1beta2 resource is refused by the API server."""
    (tmp_path / "schemas").mkdir()
    rendered = render(CI_VALUES["strimzi"], values=values, tmp_dir=tmp_path)
    resources = [d for d in rendered.documents if d["kind"] in STRIMZI_KINDS]
    assert Counter(d["kind"] for d in resources) == {"KafkaTopic": 6, "KafkaUser": len(SERVICES)}
    assert {d["apiVersion"] for d in resources} == {"kafka.strimzi.io/v1"}
    validated = _validate_strimzi(rendered, tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert f"Valid: {len(resources)}, Invalid: 0, Errors: 0" in validated.stdout


def test_the_strimzi_schema_check_does_catch_what_v1_dropped(tmp_path: Path) -> None:
    """v1 KafkaUsers have no singular ``operation`` (v1beta2's deprecated form): the vendored schema says so."""
    (tmp_path / "schemas").mkdir()
    rendered = render(CI_VALUES["strimzi"])
    user = rendered.of_kind("KafkaUser")[0]
    acl = user["spec"]["authorization"]["acls"][0]
    acl["operation"] = acl.pop("operations")[0]
    validated = _validate_strimzi(Rendered("", [user]), tmp_path)
    assert validated.returncode != 0
    assert "operation" in validated.stdout


def test_an_older_strimzi_operator_keeps_v1beta2_and_a_version_no_operator_serves_is_refused(
    tmp_path: Path,
) -> None:
    older = render(
        CI_VALUES["strimzi"], values={"strimzi": {"apiVersion": "kafka.strimzi.io/v1beta2"}}, tmp_dir=tmp_path
    )
    versions = {d["apiVersion"] for d in older.documents if d["kind"] in STRIMZI_KINDS}
    assert versions == {"kafka.strimzi.io/v1beta2"}
    refused = helm(
        "template", "x", str(CHART), "-f", str(CI_VALUES["strimzi"]), "--set", "strimzi.apiVersion=v1", check=False
    )
    assert refused.returncode != 0
    assert "strimzi.apiVersion must be kafka.strimzi.io/v1" in refused.stderr


def _namespaces(rendered: Rendered, kind: str) -> set[str | None]:
    return {d["metadata"].get("namespace") for d in rendered.of_kind(kind)}


def test_kafka_topics_go_to_the_topic_operator_and_kafka_users_stay_with_the_pods(tmp_path: Path) -> None:
    """The User Operator makes each user's Secret beside its KafkaUser, and the pods mount it from the release's
    namespace: a topics namespace of its own leaves the users there (no namespace: the release's)."""
    rendered = render(CI_VALUES["strimzi"], values={"strimzi": {"topics": {"namespace": "kafka"}}}, tmp_dir=tmp_path)
    assert _namespaces(rendered, "KafkaTopic") == {"kafka"}
    assert _namespaces(rendered, "KafkaUser") == {None}
    users = {d["metadata"]["name"] for d in rendered.of_kind("KafkaUser")}
    for service in SERVICES:
        [volume] = [v for v in rendered.pod_specs()[f"member-export-{service}"]["volumes"] if "projected" in v]
        mounted = {source["secret"]["name"] for source in volume["projected"]["sources"]}
        assert mounted & users == {f"member-export-{service}"}


def test_users_elsewhere_are_said_and_the_deprecated_namespace_still_places_both(tmp_path: Path) -> None:
    users_elsewhere = {"strimzi": {"users": {"namespace": "kafka-users"}}}
    rendered = render(CI_VALUES["strimzi"], values=users_elsewhere, tmp_dir=tmp_path)
    assert (_namespaces(rendered, "KafkaTopic"), _namespaces(rendered, "KafkaUser")) == ({None}, {"kafka-users"})
    # A values file written before the two settings: strimzi.namespace places both, as it did.
    legacy = render(CI_VALUES["strimzi"], values={"strimzi": {"namespace": "kafka"}}, tmp_dir=tmp_path)
    assert (_namespaces(legacy, "KafkaTopic"), _namespaces(legacy, "KafkaUser")) == ({"kafka"}, {"kafka"})
    both = {"strimzi": {"namespace": "kafka", "topics": {"namespace": "topics"}, "users": {"namespace": ""}}}
    split = render(CI_VALUES["strimzi"], values=both, tmp_dir=tmp_path)
    assert _namespaces(split, "KafkaTopic") == {"topics"}
    # And the install notes say where the users' Secrets must be copied to.
    installed = helm(
        "install",
        "--dry-run=client",
        "x",
        str(CHART),
        "--namespace",
        "exports",
        "-f",
        str(CI_VALUES["strimzi"]),
        "--set",
        "strimzi.namespace=kafka",
    )
    assert "The KafkaUsers are in kafka" in installed.stdout
    assert "copy them there" in installed.stdout


def test_kafka_topics_outlive_an_uninstall_unless_told_otherwise(tmp_path: Path) -> None:
    """Deleting a KafkaTopic deletes the topic and its records (Strimzi's finalizer): Helm keeps them."""
    rendered = render(CI_VALUES["strimzi"])
    for topic in rendered.of_kind("KafkaTopic"):
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for user in rendered.of_kind("KafkaUser"):  # credentials and ACLs go with the release
        assert "helm.sh/resource-policy" not in user["metadata"].get("annotations", {})
    deleted = render(CI_VALUES["strimzi"], values={"strimzi": {"topics": {"keep": False}}}, tmp_dir=tmp_path)
    assert all("annotations" not in t["metadata"] for t in deleted.of_kind("KafkaTopic"))


# --- Names ----------------------------------------------------------------------------------------------------

EVERYTHING = (
    "grafanaDashboard.enabled=true",
    "prometheusRule.enabled=true",
    "podMonitor.enabled=true",
    "keda.enabled=true",
    "serviceAccount.create=true",
)


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_a_long_release_name_gives_every_resource_a_valid_name_of_its_own(values: str) -> None:
    """Helm allows 53 characters: Service and Job names (and the Job's job-name label) stop at 63, and each
    service's KafkaUser, Deployment, budget and policy must still be its own."""
    assert len(LONG_RELEASE) == 53
    rendered = _render_release(LONG_RELEASE, CI_VALUES[values], sets=EVERYTHING)
    base = _render_release("member-export", CI_VALUES[values], sets=EVERYTHING)
    fitting = {(d["kind"], d["metadata"]["name"]) for d in base.documents}  # names that fit are as they were
    assert {("Service", "member-export-admin"), ("Job", "member-export-migrations")} <= fitting
    assert {("Deployment", f"member-export-{service}") for service in SERVICES} <= fitting
    names = Counter((d["kind"], d["metadata"]["name"]) for d in rendered.documents)
    assert [name for name in names if len(name[1]) > 63] == []
    assert [name for name, count in names.items() if count > 1] == []
    deployments = {d["metadata"]["name"] for d in rendered.of_kind("Deployment")}
    assert len(deployments) == len(SERVICES)
    for scaled in rendered.of_kind("ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    if values == "strimzi":
        users = {d["metadata"]["name"] for d in rendered.of_kind("KafkaUser")}
        assert len(users) == len(SERVICES)
        for name, spec in rendered.pod_specs().items():
            for volume in spec["volumes"]:
                for source in volume.get("projected", {}).get("sources", []):
                    assert source["secret"]["name"] in users | {"events-cluster-ca-cert"}, name


# --- NetworkPolicies ------------------------------------------------------------------------------------------


def test_prometheus_still_scrapes_the_admin_api_when_its_callers_are_listed() -> None:
    rendered = render(CI_VALUES["production"])
    admin = rendered.named("NetworkPolicy", "member-export-admin")["spec"]
    allowed_callers = yaml.safe_load(CI_VALUES["production"].read_text())["networkPolicy"]["adminFrom"]
    assert admin["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": "http"}], "from": allowed_callers},
        {"ports": [{"protocol": "TCP", "port": "http"}], "from": [MONITORING]},
    ]


def test_extra_egress_rules_reach_every_pod(tmp_path: Path) -> None:
    collector = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
        "ports": [{"protocol": "TCP", "port": 4318}],
    }
    values = {"networkPolicy": {"egress": {"extra": [collector]}}}
    rendered = render(CI_VALUES["production"], values=values, tmp_dir=tmp_path)
    policies = rendered.of_kind("NetworkPolicy")
    assert len(policies) == len(SERVICES) + 1  # and the migration Job's
    for policy in policies:
        assert policy["spec"]["egress"][-1] == collector, policy["metadata"]["name"]
        assert len(policy["spec"]["egress"]) > 2  # DNS, the catalog, ... still there
    _pass_the_kubernetes_schemas(rendered, tmp_path)


def _pass_the_kubernetes_schemas(rendered: Rendered, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(rendered.text)
    for version in KUBERNETES_VERSIONS:
        validated = _kubeconform(version, manifests)
        assert validated.returncode == 0, validated.stdout + validated.stderr


# --- Volumes --------------------------------------------------------------------------------------------------

#: A mount in partnerSecrets.mountPath's directory (EXPORT_ALLOWED_SECRET_DIRS: file: references would read it).
IN_PARTNER_SECRETS = "/var/run/secrets/member-export/x"
POSTGRES_CA: dict[str, Any] = {
    "extraVolumes": [{"name": "postgres-ca", "secret": {"secretName": "postgres-ca", "defaultMode": 288}}],
    "extraVolumeMounts": [{"name": "postgres-ca", "mountPath": "/etc/member-export/postgres", "readOnly": True}],
}


def test_extra_volumes_reach_every_service_and_a_service_adds_its_own(tmp_path: Path) -> None:
    scratch = {"name": "spool", "emptyDir": {"sizeLimit": "1Gi"}}
    values = {
        **POSTGRES_CA,
        "services": {
            "dispatcher": {
                "extraVolumes": [scratch],
                "extraVolumeMounts": [{"name": "spool", "mountPath": "/var/spool/exports"}],
            }
        },
    }
    rendered = render(CI_VALUES["production"], values=values, tmp_dir=tmp_path)
    for service in SERVICES:
        spec = rendered.pod_specs()[f"member-export-{service}"]
        [container] = spec["containers"]
        assert POSTGRES_CA["extraVolumes"][0] in spec["volumes"], service
        assert POSTGRES_CA["extraVolumeMounts"][0] in container["volumeMounts"], service
        assert (scratch in spec["volumes"]) == (service == "dispatcher")
    _pass_the_kubernetes_schemas(rendered, tmp_path)


def test_the_migration_job_mounts_the_extra_volumes_and_its_own(tmp_path: Path) -> None:
    """The catalog URL's CA must reach the hook Job that migrates the catalog, not only the services."""
    own = {"name": "job-scratch", "emptyDir": {}}
    values = {
        **POSTGRES_CA,
        "migrations": {"extraVolumes": [own], "extraVolumeMounts": [{"name": "job-scratch", "mountPath": "/var/job"}]},
    }
    rendered = render(CI_VALUES["production"], values=values, tmp_dir=tmp_path)
    [job] = rendered.of_kind("Job")
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert POSTGRES_CA["extraVolumes"][0] in spec["volumes"]
    assert own in spec["volumes"]
    assert POSTGRES_CA["extraVolumeMounts"][0] in container["volumeMounts"]
    assert {"name": "job-scratch", "mountPath": "/var/job"} in container["volumeMounts"]
    assert all("from" not in mount for mount in container["volumeMounts"])
    for service in SERVICES:
        assert own not in rendered.pod_specs()[f"member-export-{service}"]["volumes"], service
    _pass_the_kubernetes_schemas(rendered, tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("extraVolumes", [{"name": "tmp", "emptyDir": {}}], 'extra volume "tmp" of the scheduler pod'),
        (
            "migrations.extraVolumeMounts",
            [{"name": "x", "mountPath": "/tmp"}],
            'migrations.extraVolumeMounts[0] ("/tmp") are one directory in the migrations container',
        ),
        (
            "services.admin.extraVolumes",
            [{"name": "admin-tokens", "emptyDir": {}}],
            'extra volume "admin-tokens" of the admin pod',
        ),
        (
            "extraVolumes",
            [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}],
            'extra volume "a" of the scheduler pod has the name of another extra volume',
        ),
        ("extraVolumeMounts", [{"name": "x", "mountPath": "/tmp"}], 'extraVolumeMounts[0] ("/tmp") are one directory'),
        (
            "services.dispatcher.extraVolumeMounts",
            [{"name": "x", "mountPath": IN_PARTNER_SECRETS}],
            "partnerSecrets.mountPath",
        ),
    ],
)
def test_an_extra_volume_or_mount_the_pod_cannot_take_fails_the_render_naming_it(
    key: str, value: list[dict[str, Any]], message: str
) -> None:
    refused = helm("template", "x", str(CHART), "--set-json", f"{key}={json.dumps(value)}", check=False)
    assert refused.returncode != 0
    assert message in refused.stderr


def test_the_smtp_ca_is_mounted_in_the_notifier_alone_where_its_setting_points(tmp_path: Path) -> None:
    values = {"smtp": {"caSecret": {"name": "smtp-ca", "key": "root.pem"}}}
    rendered = render(CI_VALUES["production"], values=values, tmp_dir=tmp_path)
    for service in SERVICES:
        spec = rendered.pod_specs()[f"member-export-{service}"]
        [container] = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if service != "notifier":
            assert "EXPORT_SMTP_CA_FILE" not in env
            assert all(volume.get("secret", {}).get("secretName") != "smtp-ca" for volume in spec["volumes"])
            continue
        [volume] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "smtp-ca"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        [item] = volume["secret"]["items"]
        assert item["key"] == "root.pem"
        assert env["EXPORT_SMTP_CA_FILE"] == f"{mount['mountPath']}/{item['path']}"
        assert mount["readOnly"] is True
    assert "smtp_ca_file" in NotifierSettings.model_fields  # the setting the notifier reads
    _pass_the_kubernetes_schemas(rendered, tmp_path)
    # One place for the setting: the notifier's env may not set it over the mounted CA.
    both = {**values, "services": {"notifier": {"env": {"EXPORT_SMTP_CA_FILE": "/tmp/ca.pem"}}}}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(both))
    refused = helm("template", "x", str(CHART), "-f", str(path), check=False)
    assert "the chart sets EXPORT_SMTP_CA_FILE in the notifier container from smtp.caSecret" in refused.stderr
