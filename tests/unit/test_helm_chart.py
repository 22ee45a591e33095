"""The Helm chart, as a cluster and its operators would see it: it lints, its manifests pass the Kubernetes
schemas (kubeconform, local schemas, no network), kube-score finds nothing critical on production-like values,
and what it says about Kafka (topics, users, ACLs, consumer groups, credentials) is what the code does.

The other half, the chart's commands, variables, ports and probes actually running an export, is
tests/e2e/test_chart_run.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from devtools.prerequisites import go_tool, kubernetes_schemas
from shared.domain.secret_references import DIRECTORIES_VARIABLE, KUBERNETES_SECRETS, SecretReferencePolicy
from shared.topics import Topics
from tests.chart import CHART, CI_VALUES, SERVICES, Rendered, helm, render
from tests.topic_usage import topic_use

#: Kubernetes versions the manifests are validated against: the chart's kubeVersion floor and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")
#: The built-in kinds the chart makes (schema file stem → kind); a new kind must be added here to be validated.
BUILT_IN_KINDS = {
    "configmap-v1": "ConfigMap",
    "deployment-apps-v1": "Deployment",
    "service-v1": "Service",
    "poddisruptionbudget-policy-v1": "PodDisruptionBudget",
    "networkpolicy-networking-v1": "NetworkPolicy",
    "job-batch-v1": "Job",
    "serviceaccount-v1": "ServiceAccount",
}
#: Operators' custom resources: their structure is held by the tests below, not by a schema.
CUSTOM_KINDS = ("KafkaTopic", "KafkaUser", "PodMonitor", "ScaledObject")


@pytest.fixture(scope="module")
def renders() -> dict[str, Rendered]:
    return {name: render(path) for name, path in CI_VALUES.items()}


def test_the_ci_values_files_are_the_three_the_chart_promises() -> None:
    assert set(CI_VALUES) == {"default", "production", "strimzi"}


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_helm_lint_is_clean(values: str) -> None:
    linted = helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES[values]), check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_every_kind_rendered_is_validated_or_a_known_custom_resource(renders: dict[str, Rendered]) -> None:
    kinds = {d["kind"] for rendered in renders.values() for d in rendered.documents}
    assert kinds == set(BUILT_IN_KINDS.values()) | set(CUSTOM_KINDS)
    assert not any(r.of_kind("Secret") for r in renders.values()), "the chart never renders a Secret"


def _kubeconform(version: str, manifests: Path) -> subprocess.CompletedProcess[str]:
    schemas = kubernetes_schemas(version, BUILT_IN_KINDS)
    return subprocess.run(
        [
            str(go_tool("kubeconform")),
            "-strict",
            "-summary",
            "-schema-location",
            f"{schemas}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
            "-skip",
            ",".join(CUSTOM_KINDS),
            str(manifests),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_manifests_pass_the_kubernetes_schemas(
    renders: dict[str, Rendered], values: str, version: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(renders[values].text)
    validated = _kubeconform(version, manifests)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Invalid: 0, Errors: 0" in validated.stdout


def test_the_schema_check_does_catch_a_wrong_field(renders: dict[str, Rendered], tmp_path: Path) -> None:
    deployment = renders["default"].deployments()["dispatcher"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/livez"
    manifests = tmp_path / "wrong.yaml"
    manifests.write_text(yaml.safe_dump(deployment))
    validated = _kubeconform(KUBERNETES_VERSIONS[0], manifests)
    assert validated.returncode != 0
    assert "paht" in validated.stdout


def _kube_score(manifests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(go_tool("kube-score")), "score", "--output-format", "ci", str(manifests)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kube_score_finds_nothing_critical_on_production_values(renders: dict[str, Rendered], tmp_path: Path) -> None:
    manifests = tmp_path / "production.yaml"
    manifests.write_text(renders["production"].text)
    scored = _kube_score(manifests)
    findings = [line for line in scored.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))]
    assert findings == []
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert scored.stdout.count("[OK]") > 50  # it did score every object


def test_kube_score_does_flag_what_production_values_fix(renders: dict[str, Rendered], tmp_path: Path) -> None:
    """The defaults have no NetworkPolicy (no egress list to write it from): kube-score says so."""
    manifests = tmp_path / "default.yaml"
    manifests.write_text(renders["default"].text)
    scored = _kube_score(manifests)
    assert scored.returncode != 0
    assert "does not have a matching NetworkPolicy" in scored.stdout


# --- The pods ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_every_pod_is_non_root_read_only_tokenless_and_bounded(renders: dict[str, Rendered], values: str) -> None:
    for name, pod in renders[values].pod_specs().items():
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 10000, name
        assert pod["securityContext"]["runAsGroup"] > 10000, name
        [container] = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security["runAsUser"] > 10000, name
        assert security["runAsGroup"] > 10000, name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory", "ephemeral-storage"} <= set(container["resources"][bound]), (name, bound)
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name


def test_probes_ask_the_right_questions(renders: dict[str, Rendered]) -> None:
    """Workers: liveness /livez, readiness /readyz, on their metrics port. The admin API: liveness /livez (no
    dependency asked: a catalog outage must not restart it), readiness /healthz (the catalog). All: a startup
    probe, and liveness is never readiness."""
    rendered = renders["production"]
    for service in SERVICES:
        container = rendered.container(service)
        port = container["ports"][0]["name"]
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
        assert {probe["port"] for probe in probes.values()} == {port}
        expected_readiness = "/healthz" if service == "admin" else "/readyz"
        assert probes["liveness"]["path"] == "/livez", service
        assert probes["startup"]["path"] == "/livez", service
        assert probes["readiness"]["path"] == expected_readiness, service


def test_replicas_spread_over_nodes_and_zones_with_a_disruption_budget(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for d in rendered.of_kind("PodDisruptionBudget")
    }
    assert budgets == set(SERVICES)
    for service, deployment in rendered.deployments().items():
        spec = deployment["spec"]["template"]["spec"]
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, service
        for constraint in spec["topologySpreadConstraints"]:
            assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_network_policies_let_in_only_the_api_and_the_monitoring_namespace(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    policies = {
        d["metadata"]["name"].removeprefix("member-export-"): d["spec"] for d in rendered.of_kind("NetworkPolicy")
    }
    assert set(policies) == {*SERVICES, "migrations"}
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        if name == "admin":  # its callers, and the monitoring namespace (/metrics is on the API's port)
            assert [rule["ports"] for rule in spec["ingress"]] == [[{"protocol": "TCP", "port": "http"}]] * 2
        elif name == "migrations":
            assert spec["ingress"] == []
        else:
            [rule] = spec["ingress"]
            assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
            assert rule["from"] == [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ]

    def destinations(name: str) -> set[str]:
        return {peer["ipBlock"]["cidr"] for rule in policies[name]["egress"] for peer in rule.get("to", [])}

    values = yaml.safe_load(CI_VALUES["production"].read_text())["networkPolicy"]["egress"]
    kafka, catalog = set(values["kafka"]["cidrs"]), set(values["catalog"]["cidrs"])
    store, smtp, partners, webhooks = (set(values[k]["cidrs"]) for k in ("queryStore", "smtp", "partners", "webhooks"))
    assert destinations("dispatcher") == kafka | catalog | partners  # partners: the dispatcher alone
    assert destinations("notifier") == kafka | catalog | smtp | webhooks  # webhook notifications: the notifier
    assert destinations("extractor") == kafka | catalog | store
    assert destinations("admin") == kafka | catalog | store
    assert destinations("scheduler") == kafka | catalog
    assert destinations("migrations") == catalog


def test_the_migration_job_upgrades_the_catalog_before_an_install_or_upgrade(renders: dict[str, Rendered]) -> None:
    for rendered in renders.values():
        [job] = rendered.of_kind("Job")
        assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] + container["args"] == ["exportctl", "db", "upgrade"]
        assert next(e["name"] for e in container["env"]) == "EXPORT_CATALOG_URL"


# --- Partner secrets: never where Kubernetes puts the pod's token ------------------------------------------

#: Directories that are, hold or lie in the pod's Kubernetes credentials (the services' KUBERNETES_SECRETS): each
#: parent but /, each of them, one below, and spellings the services clean first.
REACHING_THE_TOKEN = [
    *sorted({str(p) for k in KUBERNETES_SECRETS for p in PurePosixPath(k).parents if str(p) != "/"}),
    *KUBERNETES_SECRETS,
    *(f"{k}/serviceaccount" for k in KUBERNETES_SECRETS),
    "/var/run/secrets/",
    "/var/run/secrets/member-export/../kubernetes.io",
]
#: Beside them: allowed by the services, so by the chart.
BESIDE_THE_TOKEN = [
    "/var/run/secrets/member-export",
    "/var/run/secrets/kubernetes.io-other",
    "/run/secrets/member-export",
    "/var/lib/member-export",
]


def _refusal(values: dict[str, Any], tmp_path: Path) -> str | None:
    """What ``helm template`` says when it refuses ``values`` (its error), or None when it renders them."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", "x", str(CHART), "-f", str(path), check=False)
    return None if done.returncode == 0 else done.stderr


def _services_refuse(directories: str) -> bool:
    try:
        SecretReferencePolicy.parse(directories=directories)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("mount_path", REACHING_THE_TOKEN)
def test_a_partner_secrets_mount_path_reaching_the_kubernetes_token_fails_the_render_naming_the_value(
    mount_path: str, tmp_path: Path
) -> None:
    assert _services_refuse(mount_path)  # the services would stop at start: the chart says so at deploy time
    refusal = _refusal({"partnerSecrets": {"existingSecret": "partner", "mountPath": mount_path}}, tmp_path)
    assert refusal is not None, f"{mount_path} rendered"
    refused = mount_path.split(",")[-1].strip()  # the directory refused, as the services name it
    assert f'partnerSecrets.mountPath: "{refused}" would let file: references read ' in refusal
    assert "Kubernetes service-account token" in refusal
    assert DIRECTORIES_VARIABLE in refusal


@pytest.mark.parametrize("mount_path", BESIDE_THE_TOKEN)
def test_a_partner_secrets_mount_path_beside_the_kubernetes_token_is_mounted_and_allowed(
    mount_path: str, tmp_path: Path
) -> None:
    assert not _services_refuse(mount_path)
    rendered = render(
        values={"partnerSecrets": {"existingSecret": "partner", "mountPath": mount_path}}, tmp_dir=tmp_path
    )
    assert rendered.named("ConfigMap", "member-export")["data"][DIRECTORIES_VARIABLE] == mount_path
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("dispatcher")["volumeMounts"]}
    assert mounts["partner-secrets"] == mount_path


@pytest.mark.parametrize("mount_path", ["/", "var/run/secrets/member-export"])
def test_a_partner_secrets_mount_path_the_services_cannot_take_fails_the_render(
    mount_path: str, tmp_path: Path
) -> None:
    assert _services_refuse(mount_path)
    refusal = _refusal({"partnerSecrets": {"mountPath": mount_path}}, tmp_path)  # no Secret: still the variable
    assert refusal is not None, f"{mount_path} rendered"
    assert f'partnerSecrets.mountPath: "{mount_path}" must be an absolute directory other than /' in refusal


def test_a_doubled_leading_slash_is_the_same_directory_to_the_chart() -> None:
    """Linux reads //var/run as /var/run: the chart and the services' start check both refuse
    //var/run/secrets/kubernetes.io (the services' check once kept the two slashes and let it pass)."""
    path = "//var/run/secrets/kubernetes.io"
    with pytest.raises(ValueError, match=r"kubernetes\.io"):
        SecretReferencePolicy.parse(directories=path)
    refused = helm("template", "x", str(CHART), "--set", f"partnerSecrets.mountPath={path}", check=False)
    assert refused.returncode != 0
    assert f'partnerSecrets.mountPath: "{path}" would let file: references read' in refused.stderr


@pytest.mark.parametrize(
    ("values", "name"),
    [
        (
            # one of the comma-separated directories is enough
            {"services": {"extractor": {"env": {DIRECTORIES_VARIABLE: "/etc/member-export, /run"}}}},
            f"services.extractor.env.{DIRECTORIES_VARIABLE}",
        ),
        (
            {"services": {"dispatcher": {"env": {DIRECTORIES_VARIABLE.lower(): "/run/secrets"}}}},
            f"services.dispatcher.env.{DIRECTORIES_VARIABLE.lower()}",  # the services read names in any case
        ),
        (
            {"services": {"notifier": {"extraEnv": [{"name": DIRECTORIES_VARIABLE, "value": "/var/run/secrets"}]}}},
            f"services.notifier.extraEnv[{DIRECTORIES_VARIABLE}]",
        ),
    ],
)
def test_every_value_setting_the_allowed_directories_is_held_to_the_same_rule(
    values: dict[str, Any], name: str, tmp_path: Path
) -> None:
    refusal = _refusal(values, tmp_path)
    assert refusal is not None
    assert f"{name}: " in refusal
    assert "Kubernetes service-account token" in refusal


#: Not one directory: the Secret would be mounted at the literal path while the services, reading
#: EXPORT_ALLOWED_SECRET_DIRS comma-separated and trimmed, would allow other directories.
NOT_ONE_DIRECTORY = [
    "/var/run/secrets/member-export,/etc/partner",
    "/a,/b",
    "/var/run/secrets/member-export,",
    " /var/run/secrets/member-export",
    "/var/run/secrets/member-export\t",
]


@pytest.mark.parametrize("mount_path", NOT_ONE_DIRECTORY)
@pytest.mark.parametrize("secret", ["partner", ""])
def test_a_partner_secrets_mount_path_that_is_not_one_directory_fails_the_render_naming_the_value(
    mount_path: str, secret: str, tmp_path: Path
) -> None:
    """Before, "/a,/b" mounted the Secret at the directory "/a,/b" and allowed file: references in /a and /b."""
    refusal = _refusal({"partnerSecrets": {"existingSecret": secret, "mountPath": mount_path}}, tmp_path)
    assert refusal is not None, f"{mount_path!r} rendered"
    assert f"partnerSecrets.mountPath: {json.dumps(mount_path)} must be one directory" in refusal


def test_an_empty_partner_secrets_mount_path_fails_the_render_only_with_a_secret_to_mount(tmp_path: Path) -> None:
    """Without a Secret an empty path is the services' "no file: reference"; with one, nowhere to mount it."""
    refusal = _refusal({"partnerSecrets": {"existingSecret": "partner", "mountPath": ""}}, tmp_path)
    assert refusal is not None
    assert 'partnerSecrets.mountPath: "" must be one directory' in refusal
    rendered = render(values={"partnerSecrets": {"mountPath": ""}}, tmp_dir=tmp_path)
    assert rendered.named("ConfigMap", "member-export")["data"][DIRECTORIES_VARIABLE] == ""


def test_the_partner_secrets_are_mounted_in_the_dispatcher_and_the_notifier_alone(tmp_path: Path) -> None:
    rendered = render(values={"partnerSecrets": {"existingSecret": "partner"}}, tmp_dir=tmp_path)
    mounted = {
        service
        for service in SERVICES
        if any(m["name"] == "partner-secrets" for m in rendered.container(service)["volumeMounts"])
    }
    assert mounted == {"dispatcher", "notifier"}  # file: references of partners' and webhooks' signing secrets


# --- config.extra: one place to set each thing ----------------------------------------------------------------

#: The ConfigMap keys the chart writes from its own values (not from config.extra), and those values.
CHART_CONFIG = {
    "EXPORT_KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrapServers",
    "EXPORT_TOPIC_PREFIX": "topics.prefix",
    "EXPORT_TOPIC_PARTITIONS": "topics.partitions",
    "EXPORT_TOPIC_REPLICATION_FACTOR": "topics.replicationFactor",
    "EXPORT_TOPICS_CREATE": "topics.create",
    "EXPORT_LOG_FORMAT": "config.logFormat",
    "EXPORT_LOG_LEVEL": "config.logLevel",
    "EXPORT_ALLOWED_DESTINATIONS": "config.allowedDestinations",
    "EXPORT_ALLOWED_SECRET_ENV_PREFIXES": "config.allowedSecretEnvPrefixes",
    DIRECTORIES_VARIABLE: "partnerSecrets.mountPath",
    "EXPORT_RUN_LINK_BASE_URL": "config.runLinkBaseUrl",
    "EXPORT_ADMIN_PUBLIC_URL": "config.adminPublicUrl",
}


def test_the_chart_config_keys_are_every_key_the_config_map_writes_but_config_extra(
    renders: dict[str, Rendered],
) -> None:
    values = yaml.safe_load(CI_VALUES["production"].read_text())  # sets the optional ones
    written = set(renders["production"].named("ConfigMap", "member-export")["data"])
    assert written - set(values["config"]["extra"]) == set(CHART_CONFIG)


@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_config_extra_setting_a_key_the_chart_sets_fails_the_render_naming_the_value_that_sets_it(
    case: Callable[[str], str], tmp_path: Path
) -> None:
    """Before, the key was written twice in the ConfigMap (in another case, two variables the services read as one):
    which one a service got was up to the reader."""
    for key, value in CHART_CONFIG.items():
        refusal = _refusal({"config": {"extra": {case(key): "/var/run/secrets/member-export"}}}, tmp_path)
        assert refusal is not None, f"config.extra.{case(key)} rendered"
        assert f"config.extra.{case(key)}: the chart sets {key} from {value} (" in refusal
        assert f"set {value} instead" in refusal


def test_config_extra_setting_one_variable_twice_in_two_cases_fails_the_render(tmp_path: Path) -> None:
    extra = {"EXPORT_KAFKA_COMPRESSION": "lz4", "export_kafka_compression": "gzip"}
    refusal = _refusal({"config": {"extra": extra}}, tmp_path)
    assert refusal is not None
    assert "config.extra.EXPORT_KAFKA_COMPRESSION and config.extra.export_kafka_compression" in refusal


def test_config_extra_adds_a_setting_the_chart_does_not_set_once(tmp_path: Path) -> None:
    rendered = render(values={"config": {"extra": {"EXPORT_KAFKA_COMPRESSION": "gzip"}}}, tmp_dir=tmp_path)
    [config_map] = [d for d in rendered.text.split("---") if "kind: ConfigMap" in d and "EXPORT_TOPIC_PREFIX" in d]
    assert config_map.count("EXPORT_KAFKA_COMPRESSION:") == 1
    assert rendered.named("ConfigMap", "member-export")["data"]["EXPORT_KAFKA_COMPRESSION"] == "gzip"


# --- A container's env: one entry per variable ----------------------------------------------------------------


def _chart_env(rendered: Rendered, service: str) -> set[str]:
    """The variables the chart sets in ``service``'s container itself: not the service's env of values.yaml, nor the
    production values' extraEnv (PARTNER_ variables)."""
    given = yaml.safe_load((CHART / "values.yaml").read_text())["services"][service]["env"]
    names = {e["name"] for e in rendered.container(service)["env"]}
    return {name for name in names if name not in given and not name.startswith("PARTNER_")}


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_every_container_sets_each_variable_once(renders: dict[str, Rendered], values: str) -> None:
    for service in SERVICES:
        names = [e["name"].upper() for e in renders[values].container(service)["env"]]
        assert len(names) == len(set(names)), (values, service, names)


#: Variables the chart sets, by service, and the value each one is set from (the production values).
SET_FROM = [
    ("dispatcher", "EXPORT_METRICS_PORT", "services.dispatcher.port"),
    ("admin", "EXPORT_ADMIN_PORT", "services.admin.port"),
    ("admin", "EXPORT_ADMIN_TOKENS_FILE", "adminTokens.key"),
    ("scheduler", "EXPORT_CATALOG_URL", "catalog.existingSecret"),
    ("extractor", "EXPORT_QUERY_STORE_URL", "queryStore.existingSecret"),
    ("dispatcher", "EXPORT_CATALOG_ENCRYPTION_KEYS", "encryption.existingSecret"),
    ("admin", "EXPORT_CONSOLE_SESSION_KEY", "console.sessionKeySecret"),
    ("notifier", "EXPORT_SMTP_HOST", "smtp.host"),
    ("notifier", "EXPORT_SMTP_PASSWORD", "smtp.existingSecret"),
    ("extractor", "EXPORT_KAFKA_SECURITY_PROTOCOL", "kafka.securityProtocol"),
    ("dispatcher", "EXPORT_KAFKA_SSL_CA_FILE", "kafka.tls.caSecret"),
    ("notifier", "EXPORT_KAFKA_SASL_USERNAME", "kafka.sasl.username"),
    ("admin", "EXPORT_KAFKA_SASL_PASSWORD_FILE", "kafka.sasl.passwordSecret"),
]


def _refusal_with(base: Path, values: dict[str, Any], tmp_path: Path) -> str | None:
    """:func:`_refusal` of ``values`` over the values file ``base``."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", "x", str(CHART), "-f", str(base), "-f", str(path), check=False)
    return None if done.returncode == 0 else done.stderr


@pytest.mark.parametrize(("service", "variable", "value"), SET_FROM)
def test_a_service_env_entry_naming_a_variable_the_chart_sets_fails_the_render_naming_the_value_that_sets_it(
    renders: dict[str, Rendered], service: str, variable: str, value: str, tmp_path: Path
) -> None:
    """Before, the container had two entries of that name (Kubernetes keeps the last, silently: an env
    EXPORT_METRICS_PORT moved the service off the port its probes ask, an env EXPORT_CATALOG_URL put a URL in the pod
    spec over the Secret's)."""
    assert variable in _chart_env(renders["production"], service)
    for case in (str.upper, str.lower):
        key = case(variable)
        refusal = _refusal_with(CI_VALUES["production"], {"services": {service: {"env": {key: "1"}}}}, tmp_path)
        assert refusal is not None, f"services.{service}.env.{key} rendered"
        assert f"services.{service}.env.{key}: the chart sets {variable} in the {service} container from {value}:" in (
            refusal
        )
        assert f"set {value} instead" in refusal


def test_every_variable_the_chart_sets_is_refused_in_a_service_env(
    renders: dict[str, Rendered], tmp_path: Path
) -> None:
    rendered = renders["production"]
    for service in SERVICES:
        for variable in sorted(_chart_env(rendered, service)):
            refusal = _refusal_with(
                CI_VALUES["production"], {"services": {service: {"env": {variable: "1"}}}}, tmp_path
            )
            assert refusal is not None, f"services.{service}.env.{variable} rendered"
            assert f"the chart sets {variable} in the {service} container from " in refusal


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"services": {"dispatcher": {"extraEnv": [{"name": "EXPORT_METRICS_PORT", "value": "1"}]}}},
            "services.dispatcher.extraEnv[EXPORT_METRICS_PORT]: the chart sets EXPORT_METRICS_PORT in the dispatcher "
            "container from services.dispatcher.port:",
        ),
        (
            {
                "services": {
                    "notifier": {
                        "env": {"EXPORT_NOTIFIER_STUCK_AFTER_SECONDS": "60"},
                        "extraEnv": [{"name": "export_notifier_stuck_after_seconds", "value": "90"}],
                    }
                }
            },
            "services.notifier.env.EXPORT_NOTIFIER_STUCK_AFTER_SECONDS and "
            "services.notifier.extraEnv[export_notifier_stuck_after_seconds] set one variable of the notifier "
            "container",
        ),
        (
            {
                "services": {
                    "extractor": {"env": {"EXPORT_EXTRACTOR_PAGE_SIZE": "10", "export_extractor_page_size": "20"}}
                }
            },
            "services.extractor.env.EXPORT_EXTRACTOR_PAGE_SIZE and services.extractor.env.export_extractor_page_size "
            "set one variable",
        ),
        (
            {"config": {"extra": {"EXPORT_SMTP_HOST": "smtp.elsewhere"}}},
            "config.extra.EXPORT_SMTP_HOST: the chart sets EXPORT_SMTP_HOST in the notifier container from smtp.host, "
            "over the ConfigMap: set smtp.host instead",
        ),
    ],
)
def test_one_variable_set_twice_in_a_container_fails_the_render_naming_both(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    refusal = _refusal(values, tmp_path)
    assert refusal is not None
    assert message in refusal


def test_a_service_env_entry_the_chart_does_not_set_is_rendered_once(tmp_path: Path) -> None:
    """PLAINTEXT: the chart sets no SASL variable, so a service may (an operator's own choice, once)."""
    env = {"EXPORT_DISPATCHER_CONCURRENCY": "4", "EXPORT_KAFKA_SASL_MECHANISM": "PLAIN"}
    rendered = render(values={"services": {"dispatcher": {"env": env}}}, tmp_dir=tmp_path)
    entries = [e for e in rendered.container("dispatcher")["env"] if e["name"] in env]
    assert entries == [{"name": name, "value": value} for name, value in sorted(env.items())]


# --- A container's mounts: a directory each ------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_every_container_mounts_each_directory_once(renders: dict[str, Rendered], values: str) -> None:
    for service in SERVICES:
        paths = [m["mountPath"] for m in renders[values].container(service)["volumeMounts"]]
        assert len(paths) == len(set(paths)), (values, service, paths)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"partnerSecrets": {"existingSecret": "partner", "mountPath": "/tmp"}},
            'the chart\'s scratch directory (tmpVolume) ("/tmp") and partnerSecrets.mountPath ("/tmp") are one '
            "directory in the dispatcher container",
        ),
        (
            {"partnerSecrets": {"existingSecret": "partner", "mountPath": "/etc/member-export/kafka/"}},
            'kafka.credentialsDir ("/etc/member-export/kafka") and partnerSecrets.mountPath '
            '("/etc/member-export/kafka/") are one directory in the dispatcher container',
        ),
        (
            {"partnerSecrets": {"existingSecret": "partner", "mountPath": "/etc/member-export/kafka/partners"}},
            'partnerSecrets.mountPath ("/etc/member-export/kafka/partners") lies in kafka.credentialsDir '
            '("/etc/member-export/kafka") in the dispatcher container: a read-only Secret volume',
        ),
        (
            {"kafka": {"credentialsDir": "/etc/member-export/admin"}},
            'kafka.credentialsDir ("/etc/member-export/admin") and the chart\'s admin tokens (adminTokens) '
            '("/etc/member-export/admin") are one directory in the admin container',
        ),
        (
            {"kafka": {"credentialsDir": "/etc/member-export"}},
            'the chart\'s admin tokens (adminTokens) ("/etc/member-export/admin") lies in kafka.credentialsDir '
            '("/etc/member-export") in the admin container',
        ),
        (
            # No Secret mounted, but the directory is still EXPORT_ALLOWED_SECRET_DIRS: file: references would read
            # the Kafka password
            {"partnerSecrets": {"existingSecret": "", "mountPath": "/etc"}},
            'partnerSecrets.mountPath ("/etc") is or holds kafka.credentialsDir ("/etc/member-export/kafka") in '
            "the scheduler container: it is EXPORT_ALLOWED_SECRET_DIRS",
        ),
    ],
)
def test_a_mount_path_colliding_with_another_mount_of_the_container_fails_the_render_naming_both(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    """Before, the first two rendered a pod the API server refuses (two mounts at one path), the next two one that
    never starts (a mount point in a read-only Secret volume), the last one allowed file: references to the Kafka
    credentials."""
    refusal = _refusal_with(CI_VALUES["production"], values, tmp_path)
    assert refusal is not None
    assert message in refusal


def test_partner_secrets_in_the_scratch_directory_are_mounted_there(tmp_path: Path) -> None:
    """/tmp is an emptyDir: a mount point can be made in it, and it holds no credential."""
    rendered = render(
        CI_VALUES["production"],
        values={"partnerSecrets": {"existingSecret": "partner", "mountPath": "/tmp/partners"}},
        tmp_dir=tmp_path,
    )
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("dispatcher")["volumeMounts"]}
    assert (mounts["tmp"], mounts["partner-secrets"]) == ("/tmp", "/tmp/partners")


# --- The ServiceAccount -----------------------------------------------------------------------------------------


def test_by_default_the_pods_run_as_the_namespace_default_service_account(renders: dict[str, Rendered]) -> None:
    for values in ("default", "strimzi"):
        assert renders[values].of_kind("ServiceAccount") == []
        for name, pod in renders[values].pod_specs().items():
            assert "serviceAccountName" not in pod, (values, name)


def test_a_service_account_of_the_release_runs_the_services_without_a_token(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    account = rendered.named("ServiceAccount", "member-export")
    assert "helm.sh/hook" not in account["metadata"]["annotations"]  # the release's own, kept until uninstalled
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/member-export"
    }
    assert account["automountServiceAccountToken"] is False
    for service, deployment in rendered.deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("member-export", False), service


def test_the_migrations_run_as_a_hook_service_account_made_before_them(renders: dict[str, Rendered]) -> None:
    """The Job is a pre-install hook: the release's ServiceAccount does not exist yet on a first install, so the
    Job runs as one of its own, a hook too, made first (lower weight), with the same annotations and no token."""
    rendered = renders["production"]
    [job] = rendered.of_kind("Job")
    pod = job["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("member-export-migrations", False)
    account = rendered.named("ServiceAccount", "member-export-migrations")
    annotations = account["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/member-export"
    assert account["automountServiceAccountToken"] is False


def test_without_migrations_no_hook_service_account_is_made(tmp_path: Path) -> None:
    values = {"serviceAccount": {"create": True}, "migrations": {"enabled": False}}
    rendered = render(values=values, tmp_dir=tmp_path)
    assert [a["metadata"]["name"] for a in rendered.of_kind("ServiceAccount")] == ["member-export"]


def test_a_named_service_account_is_made_under_that_name(tmp_path: Path) -> None:
    rendered = render(values={"serviceAccount": {"create": True, "name": "exports"}}, tmp_dir=tmp_path)
    names = {a["metadata"]["name"] for a in rendered.of_kind("ServiceAccount")}
    assert names == {"exports", "exports-migrations"}
    assert {d["spec"]["template"]["spec"]["serviceAccountName"] for d in rendered.of_kind("Deployment")} == {"exports"}
    [job] = rendered.of_kind("Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "exports-migrations"


def test_an_existing_service_account_runs_every_pod_the_migrations_included(tmp_path: Path) -> None:
    rendered = render(values={"serviceAccount": {"create": False, "name": "platform-exports"}}, tmp_dir=tmp_path)
    assert rendered.of_kind("ServiceAccount") == []
    pods = rendered.pod_specs()
    assert {pod["serviceAccountName"] for pod in pods.values()} == {"platform-exports"}
    assert {pod["automountServiceAccountToken"] for pod in pods.values()} == {False}
    assert "member-export-migrations" in pods


# --- Kafka: what the chart says is what the code does -------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "prod."])
def test_kafka_topics_are_the_code_topics_with_their_partitions_and_configs(prefix: str, tmp_path: Path) -> None:
    rendered = render(CI_VALUES["strimzi"], values={"topics": {"prefix": prefix, "partitions": 7}}, tmp_dir=tmp_path)
    topics = {t["spec"]["topicName"]: t["spec"] for t in rendered.of_kind("KafkaTopic")}
    specs = Topics(prefix).specs(partitions=7, replication_factor=3)
    assert list(topics) == [spec.name for spec in specs] == Topics(prefix).all()
    for spec in specs:
        assert topics[spec.name]["partitions"] == spec.partitions
        assert topics[spec.name]["replicas"] == spec.replication_factor
        assert topics[spec.name].get("config", {}) == dict(spec.configs)
    config = rendered.named("ConfigMap", "member-export")["data"]
    assert config["EXPORT_TOPICS_CREATE"] == "false"  # the KafkaTopics own them: the services only check
    assert (config["EXPORT_TOPIC_PREFIX"], config["EXPORT_TOPIC_PARTITIONS"]) == (prefix, "7")
    for topic in rendered.of_kind("KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "events"


def test_kafka_topics_owned_by_strimzi_refuse_services_that_would_create_them(tmp_path: Path) -> None:
    refused = helm(
        "template", "x", str(CHART), "-f", str(CI_VALUES["strimzi"]), "--set", "topics.create=true", check=False
    )
    assert refused.returncode != 0
    assert "set topics.create=false" in refused.stderr


def _acls(user: dict[str, Any]) -> dict[str, set[str]]:
    """``operation → resources`` of a KafkaUser (topics by name, groups as ``group:<name>``)."""
    granted: dict[str, set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        name = resource["name"] if resource["type"] == "topic" else f"{resource['type']}:{resource['name']}"
        for operation in acl["operations"]:
            granted.setdefault(operation, set()).add(name)
    return granted


def test_each_service_kafka_user_has_exactly_the_acls_it_needs(renders: dict[str, Rendered]) -> None:
    topics = Topics("")
    users = {u["metadata"]["name"].removeprefix("member-export-"): u for u in renders["strimzi"].of_kind("KafkaUser")}
    assert set(users) == set(SERVICES)
    # What each service's code reads as a consumer and produces to (tests/topic_usage.py): a table kept by hand
    # here drifted with the chart's (the notifier's follower run requests had no Write ACL).
    used = {service: topic_use(service) for service in SERVICES}
    reads = {service: use.reads for service, use in used.items()}
    writes = {service: set(use.writes) for service, use in used.items()}
    assert topics.run_requests in writes["notifier"]  # chained exports: a finished run requests its followers'
    for service, user in users.items():
        granted = _acls(user)
        assert user["spec"]["authentication"]["type"] == "tls"
        assert granted["Describe"] - {g for g in granted["Describe"] if g.startswith("group:")} == set(topics.all())
        assert "Create" not in granted, service  # topics.create=false: no Create ACL
        groups = {g for g in granted.get("Read", set()) if g.startswith("group:")}
        assert granted.get("Read", set()) - groups == reads[service], service
        # A difference names the lines of the code producing to a topic the chart does not grant.
        differs = {topic: used[service].writes.get(topic) for topic in granted["Write"] ^ writes[service]}
        assert granted["Write"] == writes[service], (service, differs)
        consumer = service in ("extractor", "dispatcher", "notifier")
        assert groups == ({f"group:member-export-{service}"} if consumer else set()), service
        assert not set(granted) - {"Describe", "Read", "Write"}, service


def test_services_authenticate_with_their_own_strimzi_user_certificate(renders: dict[str, Rendered]) -> None:
    rendered = renders["strimzi"]
    for service in SERVICES:
        container = rendered.container(service)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["EXPORT_KAFKA_SECURITY_PROTOCOL"] == "SSL"
        files = {env[f"EXPORT_KAFKA_SSL_{what}_FILE"] for what in ("CA", "CERT", "KEY")}
        volume = _kafka_volume(rendered, service)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-credentials")
        projected = {
            f"{mount['mountPath']}/{item['path']}": (source["secret"]["name"], item["key"])
            for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]
        }
        assert set(projected) == files
        assert projected[env["EXPORT_KAFKA_SSL_CERT_FILE"]] == (f"member-export-{service}", "user.crt")
        assert projected[env["EXPORT_KAFKA_SSL_KEY_FILE"]] == (f"member-export-{service}", "user.key")
        assert projected[env["EXPORT_KAFKA_SSL_CA_FILE"]] == ("events-cluster-ca-cert", "ca.crt")


def _kafka_volume(rendered: Rendered, service: str) -> dict[str, Any]:
    pod = rendered.deployments()[service]["spec"]["template"]["spec"]
    return next(v for v in pod["volumes"] if v["name"] == "kafka-credentials")


def test_sasl_credentials_are_mounted_files_the_settings_point_at(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    for service in SERVICES:
        env = {e["name"]: e.get("value") for e in rendered.container(service)["env"]}
        assert env["EXPORT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["EXPORT_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["EXPORT_KAFKA_SASL_USERNAME"] == "member-export"
        assert "EXPORT_KAFKA_SASL_PASSWORD" not in env  # never a variable: a file, readable by the group only
        volume = _kafka_volume(rendered, service)
        assert volume["projected"]["defaultMode"] == 0o440
        items = {
            item["path"]: (source["secret"]["name"], item["key"])
            for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]
        }
        assert items == {"ca.crt": ("kafka-ca", "ca.crt"), "sasl-password": ("member-export-kafka", "password")}
        assert env["EXPORT_KAFKA_SASL_PASSWORD_FILE"] == "/etc/member-export/kafka/sasl-password"
        assert env["EXPORT_KAFKA_SSL_CA_FILE"] == "/etc/member-export/kafka/ca.crt"


def test_the_console_session_key_comes_from_a_secret_to_the_admin_api_only(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    for service in SERVICES:
        env = {e["name"]: e for e in rendered.container(service)["env"]}
        if service == "admin":
            secret = env["EXPORT_CONSOLE_SESSION_KEY"]["valueFrom"]["secretKeyRef"]
            assert secret == {"name": "member-export-console", "key": "session-key"}
        else:
            assert "EXPORT_CONSOLE_SESSION_KEY" not in env
    default_admin = {e["name"] for e in renders["default"].container("admin")["env"]}
    assert "EXPORT_CONSOLE_SESSION_KEY" not in default_admin  # no Secret named: a random key per pod


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl.mechanism must be"),
        ({"kafka": {"securityProtocol": "TLS"}}, "kafka.securityProtocol must be"),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN"}}},
            "kafka.sasl.username and kafka.sasl.passwordSecret.name are required",
        ),
    ],
)
def test_kafka_security_values_that_cannot_work_fail_the_render(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    refused = helm("template", "x", str(CHART), "-f", str(path), check=False)
    assert refused.returncode != 0
    assert message in refused.stderr


def test_keda_scales_extractor_and_dispatcher_on_their_own_consumer_groups(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    topics = Topics("prod.")
    expected = {"extractor": [topics.run_requests], "dispatcher": topics.member_batch_topics()}
    scaled = {
        d["spec"]["scaleTargetRef"]["name"].removeprefix("member-export-"): d for d in rendered.of_kind("ScaledObject")
    }
    assert set(scaled) == set(expected)
    for service, scaled_object in scaled.items():
        triggers = scaled_object["spec"]["triggers"]
        assert [t["metadata"]["topic"] for t in triggers] == expected[service]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {f"prod.member-export-{service}"}
        assert "replicas" not in rendered.deployments()[service]["spec"]  # KEDA's HPA owns the count
    assert "replicas" in rendered.deployments()["notifier"]["spec"]


def test_the_pod_monitor_scrapes_every_service_metrics_port(renders: dict[str, Rendered]) -> None:
    rendered = renders["production"]
    [monitor] = rendered.of_kind("PodMonitor")
    ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    for service in SERVICES:
        labels = rendered.deployments()[service]["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert rendered.container(service)["ports"][0]["name"] in ports
        assert {e["path"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"/metrics"}


def test_the_pod_monitor_gives_the_target_labels_the_service_alerts_select(renders: dict[str, Rendered]) -> None:
    """The Prometheus Operator labels a PodMonitor's targets job=<the pod's label the jobLabel names> (else
    "<namespace>/<PodMonitor name>") and container="<the container's name>": the service-down alerts
    (files/alerts.yaml) select this release's targets by that job and name the service by that container."""
    from tests.observability import alerts, matches, operator_job, selector_labels, vector_selectors

    rendered = renders["production"]
    [monitor] = rendered.of_kind("PodMonitor")
    selectors = [selector_labels(s) for a in alerts() for s in vector_selectors(a["expr"]) if s.name == "up"]
    assert selectors, "no alert on up"
    for service in SERVICES:
        job = operator_job(
            monitor, "member-export", rendered.deployments()[service]["spec"]["template"]["metadata"]["labels"]
        )
        for labels in selectors:
            assert matches(labels["job"], job), f"{labels['job']} does not select job {job}"
    for service in SERVICES:
        assert rendered.container(service)["name"] == service


def test_the_dashboard_config_map_passes_the_kubernetes_schemas(tmp_path: Path) -> None:
    rendered = render(values={"grafanaDashboard": {"enabled": True}}, tmp_dir=tmp_path)
    manifests = tmp_path / "dashboard.yaml"
    manifests.write_text(yaml.safe_dump(rendered.named("ConfigMap", "member-export-dashboard")))
    for version in KUBERNETES_VERSIONS:
        validated = _kubeconform(version, manifests)
        assert validated.returncode == 0, validated.stdout + validated.stderr
        assert "Valid: 1, Invalid: 0, Errors: 0" in validated.stdout
