"""Secret references reach only what the operator allows (issue 12, finding 9): environment variables by
prefix, never the services' own settings, and files inside allowed directories, links followed. The
refusal names the reference, never a value; the same rule refuses at save (the application layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr, ValidationError

from services.admin.settings import AdminSettings
from services.dispatcher.settings import DispatcherSettings
from services.extractor.settings import ExtractorSettings
from services.notifier.settings import NotifierSettings
from services.scheduler.settings import SchedulerSettings
from shared.application.checks import ObjectChecks, checked
from shared.application.errors import Invalid
from shared.cli.common import CliSettings
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import (
    MAX_FILE_BYTES,
    SecretReferencePolicy,
    UnresolvableSecret,
    resolve_secret,
)
from shared.settings import CommonSettings

CATALOG_URL = "postgresql+psycopg://member_export:catalog-pw-7731@db/member_export"
PASSWD_LINE = "root:x:0:0:root:/root:/bin/bash"


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An allowed secrets directory laid out as Kubernetes mounts a Secret: files behind ``..data`` links."""
    directory = tmp_path / "member-export"
    version = directory / "..2026_01_01_00_00_00.000000001"
    version.mkdir(parents=True)
    (version / "partner-token").write_text("tok-from-file\n")
    (directory / "..data").symlink_to(version.name)
    (directory / "partner-token").symlink_to("..data/partner-token")
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", str(directory))
    return directory


@pytest.mark.parametrize("name", ["EXPORT_CATALOG_URL", "EXPORT_SMTP_PASSWORD", "export_catalog_url"])
def test_the_services_own_settings_are_never_reachable(monkeypatch, name):
    monkeypatch.setenv(name, CATALOG_URL)
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_ENV_PREFIXES", "PARTNER_,EXPORT_,export_")  # even when "allowed"
    with pytest.raises(UnresolvableSecret, match=f"env:{name} is not allowed") as refused:
        resolve_secret(SecretStr(f"env:{name}"))
    assert "catalog-pw" not in str(refused.value)


@pytest.mark.parametrize("name", ["HOME", "AWS_SECRET_ACCESS_KEY", "KUBERNETES_SERVICE_HOST", "PARTNERX"])
def test_variables_outside_the_allowed_prefixes_are_refused(monkeypatch, name):
    monkeypatch.setenv(name, "some-value")
    with pytest.raises(UnresolvableSecret, match=f"env:{name} is not allowed: environment variables must start with"):
        resolve_secret(SecretStr(f"env:{name}"))


def test_variables_with_an_allowed_prefix_resolve(monkeypatch):
    monkeypatch.setenv("PARTNER_TOKEN", "p-1")
    monkeypatch.setenv("EXPORT_SECRET_ACME_KEY", "e-2")
    assert resolve_secret(SecretStr("env:PARTNER_TOKEN")) == "p-1"
    assert resolve_secret(SecretStr("env:EXPORT_SECRET_ACME_KEY")) == "e-2"


def test_the_operator_chooses_the_prefixes(monkeypatch):
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_ENV_PREFIXES", "ACME_")
    monkeypatch.setenv("ACME_TOKEN", "a-1")
    monkeypatch.setenv("PARTNER_TOKEN", "p-1")
    assert resolve_secret(SecretStr("env:ACME_TOKEN")) == "a-1"
    with pytest.raises(UnresolvableSecret, match="must start with ACME_"):
        resolve_secret(SecretStr("env:PARTNER_TOKEN"))


@pytest.mark.parametrize("reference", ["file:/etc/passwd", "file:/proc/self/environ", "file:etc/passwd"])
def test_files_outside_the_allowed_directories_are_refused_unread(secrets_dir, reference):
    with pytest.raises(UnresolvableSecret, match="is not allowed") as refused:
        resolve_secret(SecretStr(reference))
    assert "root:" not in str(refused.value)


def test_a_path_climbing_out_of_the_allowed_directory_is_refused(secrets_dir):
    with pytest.raises(UnresolvableSecret, match=r"without '\.\.'"):
        resolve_secret(SecretStr(f"file:{secrets_dir}/../../../../etc/passwd"))


def test_a_link_leading_out_of_the_allowed_directory_is_refused_when_resolved(secrets_dir):
    (secrets_dir / "sneaky").symlink_to("/etc/passwd")
    reference = SecretStr(f"file:{secrets_dir}/sneaky")
    assert SecretReferencePolicy.from_environment().refusal(reference.get_secret_value()) is None  # as written
    with pytest.raises(UnresolvableSecret, match="it leads outside") as refused:
        resolve_secret(reference)
    assert PASSWD_LINE not in str(refused.value)


def test_a_mounted_kubernetes_secret_resolves_through_its_links(secrets_dir):
    assert resolve_secret(SecretStr(f"file:{secrets_dir}/partner-token")) == "tok-from-file"


def test_an_oversized_secret_file_is_refused(secrets_dir):
    big = secrets_dir / "big"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(UnresolvableSecret, match="larger than"):
        resolve_secret(SecretStr(f"file:{big}"))


def test_literals_are_the_secret_itself():
    assert resolve_secret(SecretStr("literal-token"), SecretReferencePolicy.parse("", "")) == "literal-token"


@pytest.mark.parametrize(
    ("prefixes", "directories", "error"),
    [
        ("PARTNER-", "/run/s", "not the beginning of an environment variable name"),
        ("PARTNER_", "relative/dir", "must be an absolute directory"),
        ("PARTNER_", "/", "must be an absolute directory other than /"),
    ],
)
def test_malformed_settings_stop_the_service_naming_them(monkeypatch, prefixes, directories, error):
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_ENV_PREFIXES", prefixes)
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", directories)
    with pytest.raises(ValidationError, match=error):
        CommonSettings()


SERVICE_ACCOUNT_TOKEN = "file:/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.mark.parametrize(
    "directories",
    [
        "/var",
        "/var/run/secrets",
        "/var/run/secrets/",
        "/var/run/secrets/member-export,/var/run/secrets/kubernetes.io",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/run",
        "/run/secrets/kubernetes.io",
    ],
)
def test_an_allowed_directory_reaching_the_kubernetes_credentials_stops_the_service_naming_the_variable(
    monkeypatch, directories
):
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", directories)
    with pytest.raises(ValidationError, match=r"EXPORT_ALLOWED_SECRET_DIRS: .* Kubernetes service-account token"):
        CommonSettings()
    with pytest.raises(UnresolvableSecret, match="EXPORT_ALLOWED_SECRET_DIRS"):
        resolve_secret(SecretStr(SERVICE_ACCOUNT_TOKEN))  # the dispatcher reads the variable itself


def test_the_kubernetes_credentials_are_never_a_reference_whatever_the_directories_say():
    policy = SecretReferencePolicy(directories=("/var",))  # built directly: no parse to refuse it
    refusal = policy.refusal(SERVICE_ACCOUNT_TOKEN)
    assert refusal is not None
    assert "Kubernetes credentials are never read" in refusal
    assert policy.refusal("file:/var/lib/member-export/token") is None
    with pytest.raises(UnresolvableSecret, match="Kubernetes credentials"):
        policy.resolve(SecretStr(SERVICE_ACCOUNT_TOKEN))


def test_directories_beside_the_kubernetes_credentials_are_allowed(monkeypatch):
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", "/var/run/secrets/member-export,/var/run/secrets/kubernetes.iox")
    assert CommonSettings().secret_references.directories[1] == "/var/run/secrets/kubernetes.iox"


def test_no_setting_lives_in_the_namespace_kept_for_partner_secrets():
    for settings in (CommonSettings, SchedulerSettings, ExtractorSettings, DispatcherSettings, NotifierSettings):
        assert not [name for name in settings.model_fields if name.upper().startswith("SECRET_")], settings
    for settings in (AdminSettings, CliSettings):
        assert not [name for name in settings.model_fields if name.upper().startswith("SECRET_")], settings


# --- at save: the same rule, through the application layer's checks -------------------------------


def _save(spec: dict[str, object]) -> None:
    checks = ObjectChecks(
        policy=DestinationPolicy.parse("0.0.0.0/0"),
        resolve_host=lambda host: ["203.0.113.7"],
        secret_references=SecretReferencePolicy.parse(),
    )
    profile = ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example", **spec})
    checked([profile], cast(Any, None), checks)  # a profile refers to nothing: the store is not asked


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"auth": {"type": "bearer", "token": "env:EXPORT_CATALOG_URL"}}, "auth.token"),
        ({"auth": {"type": "basic", "username": "u", "password": "env:HOME"}}, "auth.password"),
        ({"auth": {"type": "api_key", "key": "file:/etc/shadow"}}, "auth.key"),
        (
            {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": "https://partner.example/token",
                    "client_id": "c",
                    "client_secret": "file:/etc/passwd",
                }
            },
            "auth.client_secret",
        ),
        ({"signing_secret": "env:EXPORT_CATALOG_ENCRYPTION_KEYS"}, "signing_secret"),
    ],
)
def test_a_forbidden_reference_is_refused_at_save_naming_the_field(profile, field):
    with pytest.raises(Invalid) as refused:
        _save(profile)
    [problem] = refused.value.problems
    assert problem.startswith(f"ConnectionProfile 'p': field '{field}': secret reference ")
    assert "is not allowed" in problem


def test_allowed_references_and_literals_are_saved():
    _save({"auth": {"type": "bearer", "token": "env:PARTNER_TOKEN"}, "signing_secret": "whsec_literal"})
    _save({"auth": {"type": "api_key", "key": "file:/var/run/secrets/member-export/partner-key"}})


def test_the_checks_follow_the_settings_by_default(monkeypatch):
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_ENV_PREFIXES", "ACME_")
    checks = ObjectChecks(policy=DestinationPolicy(), resolve_host=lambda host: [])
    assert checks.secret_references == SecretReferencePolicy.parse("ACME_", "/var/run/secrets/member-export")


def test_a_doubled_leading_slash_reaches_the_service_account_token_as_linux_reads_it():
    """``//var/run/secrets`` is ``/var/run/secrets`` to Linux: refused as the allowed directories, as the chart refuses
    it (before, ``os.path.normpath`` kept the two slashes and the directory was allowed)."""
    for directories in ("//var/run/secrets", "//run/secrets/kubernetes.io/serviceaccount"):
        with pytest.raises(ValueError, match=r"kubernetes\.io"):
            SecretReferencePolicy.parse(directories=directories)
