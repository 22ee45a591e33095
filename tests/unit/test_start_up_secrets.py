"""What a service that fails to start (or stops by an unexpected error) writes: never a secret it was given, and
still the error, clearly. The services' real entry points run as processes (no Kafka, no PostgreSQL needed: each
case fails before it would wait for one)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from shared import log as shared_log
from shared.catalog import CatalogStores
from shared.kafka import KafkaSetupError, check_kafka_connection
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["scheduler", "extractor", "dispatcher", "notifier", "admin"]
#: The secret of every case: characters URLs and shells treat apart, and a distinctive start.
SECRET = "Sx7pw-Probe'q"
#: How long a service may take to fail (its imports on a busy machine included).
FAIL_SECONDS = 60


def _start(service: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {
        "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "EXPORT_QUERY_STORE_URL": f"sqlite:///{tmp_path / 'members.db'}",
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "EXPORT_METRICS_PORT": "0",
        # Secrets the failure has nothing to do with: shown nowhere either.
        "EXPORT_SMTP_PASSWORD": f"smtp-{SECRET}",
        "EXPORT_CONSOLE_SESSION_KEY": f"session-{SECRET}-0123456789abcdef",
    }
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=FAIL_SECONDS,
        check=False,
    )


def _shown(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _assert_no_secret(done: subprocess.CompletedProcess[str]) -> None:
    shown = _shown(done)
    assert "Sx7pw" not in shown
    assert "Probe'q" not in shown


@pytest.mark.parametrize("service", SERVICES)
def test_a_catalog_password_holding_an_at_sign_is_refused_naming_the_variable(service: str, tmp_path: Path):
    """SQLAlchemy ends the password at its first '@' and reads the rest as the host: before, psycopg's "failed to
    resolve host 'Probe'q@127.0.0.1'" showed the password's end in the start-up traceback."""
    url = f"postgresql+psycopg://app:{SECRET.replace('-', '@')}@127.0.0.1:1/catalog"
    done = _start(service, {"EXPORT_CATALOG_URL": url}, tmp_path)
    assert done.returncode == 1
    _assert_no_secret(done)
    assert "EXPORT_CATALOG_URL holds an '@' after its user information (the URL is not shown)" in done.stderr
    assert "percent-encoded, '@' as %40" in done.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_an_unexpected_start_up_failure_is_one_json_line_then_the_error_never_a_secret(service: str, tmp_path: Path):
    """The catalog not reached (its URL holding the password): logging is configured by then, so the failure is a
    JSON line (the structured log's) with the error and its traceback, then the error alone as the last lines.
    Before: Python's traceback only, no JSON line."""
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/catalog"
    done = _start(service, {"EXPORT_CATALOG_URL": url}, tmp_path)
    assert done.returncode == 1
    _assert_no_secret(done)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    stopped = [line for line in lines if line["event"] == "service stopped by an unexpected error"]
    assert len(stopped) == 1
    assert stopped[0]["level"] == "critical"
    assert stopped[0]["service"] == service
    assert stopped[0]["error"].startswith("sqlalchemy.exc.OperationalError: (psycopg.OperationalError)")
    assert 'connection to server at "127.0.0.1", port 1 failed' in stopped[0]["error"]
    assert stopped[0]["exception"].startswith("Traceback (most recent call last):")
    assert done.stderr.rstrip().endswith(stopped[0]["error"])


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            # Before: kafka-python's ValueError "invalid literal for int() with base 10: "<password>@127.0.0.1"".
            {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": f"exporter:{SECRET}@127.0.0.1"},
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS (server 1) holds user information ('user:password@', not shown)",
        ),
        (
            # Before: "EXPORT_KAFKA_SASL_PASSWORD_FILE: <password> does not exist".
            {
                "EXPORT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "EXPORT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "EXPORT_KAFKA_SASL_USERNAME": "exporter",
                "EXPORT_KAFKA_SASL_PASSWORD_FILE": SECRET,
            },
            "EXPORT_KAFKA_SASL_PASSWORD_FILE names no file (its value, not shown, does not read as a path",
        ),
    ],
    ids=["bootstrap-user-information", "password-in-the-file-variable"],
)
def test_kafka_settings_holding_a_secret_where_it_does_not_belong_stop_the_start_naming_the_variable(
    env: dict[str, str], said: str, tmp_path: Path
):
    # A catalog at this release's schema: the start goes on to Kafka.
    CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True).close()
    done = _start("scheduler", env, tmp_path)
    assert done.returncode == 1
    _assert_no_secret(done)
    assert said in done.stderr


def test_the_start_up_check_reads_a_listener_prefixed_address_as_the_clients_do():
    """``SASL_SSL://host:port`` is what the clients take (the prefix dropped); before, the check looked the whole of
    it up as a host name, found none, and let the service start unchecked. Here a listener that never answers (the
    kernel accepts the connection): the check now reaches it and refuses within its timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = CommonSettings(
            kafka_bootstrap_servers=f"SASL_PLAINTEXT://{address}",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="exporter",
            kafka_sasl_password=SECRET,
        )
        with pytest.raises(KafkaSetupError) as refused:
            check_kafka_connection(settings, timeout=1)
    assert str(refused.value).startswith(f"Kafka at SASL_PLAINTEXT://{address} closed the connection before answering")
    assert "check EXPORT_KAFKA_SECURITY_PROTOCOL" in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.fixture
def process_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """This process's environment holding secrets (a password, a file's, a URL's), its masking read again."""
    password_file = tmp_path / "sasl-password"
    password_file.write_text(f"file-{SECRET}\n")
    monkeypatch.setenv("EXPORT_KAFKA_SASL_PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("EXPORT_SMTP_PASSWORD", f"smtp-{SECRET}")
    monkeypatch.setenv("EXPORT_CATALOG_ENCRYPTION_KEYS", f"key-one-{SECRET},key-two-{SECRET[::-1]}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"postgresql+psycopg://app:url-{SECRET}@db/members")
    monkeypatch.setenv("PARTNER_ACME_TOKEN", f"partner-{SECRET}")  # what env: secret references name
    monkeypatch.setenv("XDG_SESSION_CLASS", "user")  # named like a secret, not one of this process's
    shared_log.process_masking.cache_clear()
    yield
    shared_log.process_masking.cache_clear()


def test_an_escaped_error_quoting_the_processs_secrets_is_reported_with_each_masked(
    process_secrets: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """The net under every escaped exception: secrets named by the environment (however the error quotes them,
    whatever their shape) are masked, the rest of the error kept. Before logging is configured (another test of
    this process may have configured it: not this one's case)."""
    monkeypatch.setattr(shared_log, "_PROCESSORS", [])
    quoted = (
        f"user could not log in with file-{SECRET} nor smtp-{SECRET}; key key-two-{SECRET[::-1]} refused; "
        f"tried url-{SECRET} at db; partner-{SECRET}"
    )
    try:
        raise RuntimeError(quoted)
    except RuntimeError as exc:
        shared_log.report_escaped(exc)
    shown = capsys.readouterr().err
    assert shown.startswith("Traceback (most recent call last):")
    assert shown.rstrip().endswith(
        "RuntimeError: user could not log in with *** nor ***; key *** refused; tried *** at db; ***"
    )
    assert "Sx7" not in shown
    assert "q'eborP" not in shown


def test_a_librarys_log_line_quoting_a_url_with_its_password_is_masked(capsys: pytest.CaptureFixture[str]):
    """kafka-python logs "Bootstrap failed: ... Unable to bootstrap from ['SASL_SSL://user:password@host']" at
    ERROR at each failed attempt: before, the JSON line carried it as it was. (By its shape: a password holding a
    quote is not recognised so; the settings refuse such an address anyway.)"""
    password = SECRET.replace("'", "9")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        shared_log.configure_logging("INFO", "json", "test")
        logging.getLogger("kafka.net.manager").error(
            "Bootstrap failed: %s", f"Unable to bootstrap from ['SASL_SSL://exporter:{password}@kafka:9093']"
        )
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.contextvars.clear_contextvars()
    assert line["event"] == "Bootstrap failed: Unable to bootstrap from ['SASL_SSL://exporter:***@kafka:9093']"
    assert line["logger"] == "kafka.net.manager"
