"""Kafka security against a real broker with secured listeners: SSL with mutual TLS, SASL_SSL and
SASL_PLAINTEXT with SCRAM and PLAIN users created when the broker was formatted.

An export runs end to end over SSL and over SASL_SSL (the four services as processes, exportctl requesting
the run); the library's clients round-trip records over every listener and mechanism; a wrong password,
an untrusted CA or a missing client certificate stops a service at start with one line naming the
setting, within seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.pipeline import LocalPipeline
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores, make_engine
from shared.kafka import (
    KafkaSetupError,
    Outgoing,
    check_kafka_connection,
    ensure_topics,
    make_producer,
    produce_and_wait,
    read_whole_topic,
)
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.secured_kafka import USER, SecuredKafka, start_secured_kafka

pytestmark = pytest.mark.integration

MEMBERS = 300

MANIFEST = """
kind: ConnectionProfile
name: partner
spec: {{base_url: "{url}"}}
---
kind: SavedQuery
name: all-members
spec: {{sql: "SELECT id, email FROM members", key_column: id}}
---
kind: HttpTemplate
name: bulk
spec: {{query: all-members, profile: partner, path: /v1/members, batch_size: 50}}
---
kind: ExportDefinition
name: secured-export
spec:
  query: all-members
  template: bulk
  notifications:
    success: {{enabled: true, recipients: [ops@example.com]}}
"""

#: How long a service that Kafka refuses may take to say so and exit (imports and settings included).
FAIL_FAST_SECONDS = 45.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    kafka = start_secured_kafka(tmp_path_factory.mktemp("secured-kafka"))
    try:
        yield kafka
    finally:
        kafka.broker.stop()


def _settings(env: dict[str, str]) -> CommonSettings:
    """Settings read from ``env`` as a service reads its environment, with a topic prefix of the test's own."""
    fields: dict[str, Any] = {key.removeprefix("EXPORT_").lower(): value for key, value in env.items()}
    return CommonSettings(**{"topic_prefix": f"t{uuid.uuid4().hex[:10]}.", "topic_partitions": 2, **fields})


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("protocol", "mechanism", "password_file"),
    [
        ("SSL", "", False),
        ("SASL_SSL", "SCRAM-SHA-512", True),
        ("SASL_SSL", "SCRAM-SHA-256", False),
        ("SASL_SSL", "PLAIN", False),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", False),
    ],
)
def test_the_library_clients_produce_and_read_back_over_each_listener(
    secured: SecuredKafka, protocol: str, mechanism: str, password_file: bool
):
    settings = _settings(secured.env(protocol, mechanism, password_file=password_file))
    check_kafka_connection(settings)
    ensure_topics(settings, [settings.topics.dead_letters])
    producer = make_producer(settings, "security-test")
    try:
        produce_and_wait(producer, [Outgoing(settings.topics.dead_letters, str(i), b"v%d" % i) for i in range(20)])
    finally:
        producer.close()
    assert sorted(read_whole_topic(settings, settings.topics.dead_letters, timeout=30)) == sorted(
        b"v%d" % i for i in range(20)
    )


@pytest.fixture(scope="module")
def member_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('members') / 'members.db'}"
    engine = make_engine(url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    return url


@pytest.mark.parametrize(("protocol", "mechanism"), [("SSL", ""), ("SASL_SSL", "SCRAM-SHA-512")])
def test_an_export_runs_end_to_end_over_the_secured_listener(
    secured: SecuredKafka, member_store: str, tmp_path: Path, protocol: str, mechanism: str
):
    with HttpReceiver() as receiver, SmtpSink() as sink:
        env = {
            **secured.env(protocol, mechanism, password_file=protocol == "SASL_SSL"),
            "EXPORT_TOPIC_PREFIX": f"sec{uuid.uuid4().hex[:8]}.",
            "EXPORT_TOPIC_PARTITIONS": "2",
            "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
            "EXPORT_QUERY_STORE_URL": member_store,
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(sink.port),
            "EXPORT_METRICS_PORT": "0",
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORTCTL_CONFIG": str(tmp_path / "no-exportctl-config.yaml"),
        }
        manifest = tmp_path / "exports.yaml"
        manifest.write_text(MANIFEST.format(url=receiver.url))
        exportctl = [sys.executable, "-m", "shared.cli"]
        assert (done := _run([*exportctl, "db", "upgrade"], env, 120)).returncode == 0, done.stderr
        assert (done := _run([*exportctl, "apply", "-f", str(manifest)], env, 120)).returncode == 0, done.stderr
        with LocalPipeline(env, tmp_path / "logs") as services:
            result = _run([*exportctl, "run", "secured-export", "--wait", "--timeout", "150"], env, 200)
            logs = {name: services.log(name) for name in services.services}
            assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{logs}"
            assert f"read: {MEMBERS}  delivered: {MEMBERS}  failed: 0" in result.stdout
            received = Counter(member["id"] for receipt in receiver.receipts() for member in receipt.members)
            assert set(received) == set(range(1, MEMBERS + 1))
            assert services.dead() == []
        for log in logs.values():  # neither secret shows in any service's log
            assert USER.password not in log
            assert "client-key-pa55" not in log


def _start_refused_extractor(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start the extractor with ``env`` on a migrated catalog; return how it ended and how long it took."""
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(catalog_url, migrate=True).close()
    started = time.monotonic()
    done = _run(
        [sys.executable, "-m", "services.extractor"],
        {
            **env,
            "EXPORT_CATALOG_URL": catalog_url,
            "EXPORT_QUERY_STORE_URL": f"sqlite:///{tmp_path / 'members.db'}",
            "EXPORT_TOPIC_PREFIX": f"refused{uuid.uuid4().hex[:6]}.",
            "EXPORT_METRICS_PORT": "0",
        },
        FAIL_FAST_SECONDS,
    )
    return done, time.monotonic() - started


def test_a_wrong_scram_password_stops_the_service_at_start_naming_the_setting(secured: SecuredKafka, tmp_path: Path):
    env = secured.env("SASL_SSL", "SCRAM-SHA-512") | {"EXPORT_KAFKA_SASL_PASSWORD": "not-the-Pa55word"}
    done, _ = _start_refused_extractor(env, tmp_path)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"Kafka at {secured.broker.bootstrap_servers_for('SASL_SSL')} refused the SASL credentials of 'exporter' "
        "(SCRAM-SHA-512): check EXPORT_KAFKA_SASL_USERNAME and EXPORT_KAFKA_SASL_PASSWORD (or "
        "EXPORT_KAFKA_SASL_PASSWORD_FILE)"
    )
    assert "Traceback" not in done.stderr
    assert "not-the-Pa55word" not in done.stderr + done.stdout


def test_an_untrusted_broker_certificate_stops_the_service_at_start_naming_the_setting(
    secured: SecuredKafka, tmp_path: Path
):
    env = secured.env("SSL") | {"EXPORT_KAFKA_SSL_CA_FILE": str(secured.untrusted_ca)}
    done, _ = _start_refused_extractor(env, tmp_path)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"Kafka's certificate at {secured.broker.bootstrap_servers_for('SSL')} is not trusted")
    assert f"EXPORT_KAFKA_SSL_CA_FILE ({secured.untrusted_ca}) must hold the CA that signed it" in last_line
    assert "Traceback" not in done.stderr


#: Settings left empty, as a chart writes a value it does not set.
NO_CLIENT_CERTIFICATE = dict.fromkeys(
    ["EXPORT_KAFKA_SSL_CERT_FILE", "EXPORT_KAFKA_SSL_KEY_FILE", "EXPORT_KAFKA_SSL_KEY_PASSWORD"], ""
)
NO_TLS = {**NO_CLIENT_CERTIFICATE, "EXPORT_KAFKA_SSL_CA_FILE": "", "EXPORT_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
NO_SASL = {
    **dict.fromkeys(["EXPORT_KAFKA_SASL_MECHANISM", "EXPORT_KAFKA_SASL_USERNAME", "EXPORT_KAFKA_SASL_PASSWORD"], ""),
    "EXPORT_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
}


@pytest.mark.parametrize(
    ("protocol", "change", "named"),
    [
        # Mutual TLS required, no client certificate given.
        ("SSL", NO_CLIENT_CERTIFICATE, "EXPORT_KAFKA_SSL_CERT_FILE"),
        # The client key's password is wrong: said before any connection.
        ("SSL", {"EXPORT_KAFKA_SSL_KEY_PASSWORD": "wrong"}, "EXPORT_KAFKA_SSL_KEY_PASSWORD"),
        # A user the broker does not know, over PLAIN.
        (
            "SASL_PLAINTEXT",
            {"EXPORT_KAFKA_SASL_MECHANISM": "PLAIN", "EXPORT_KAFKA_SASL_USERNAME": "mallory"},
            "EXPORT_KAFKA_SASL_USERNAME",
        ),
        # Clear text spoken to the TLS listener, and to the SASL one.
        ("SSL", NO_TLS, "EXPORT_KAFKA_SECURITY_PROTOCOL"),
        ("SASL_PLAINTEXT", NO_SASL, "EXPORT_KAFKA_SECURITY_PROTOCOL"),
    ],
    ids=["no-client-certificate", "wrong-key-password", "unknown-user", "plaintext-to-tls", "plaintext-to-sasl"],
)
def test_the_start_up_check_names_the_setting_kafka_refuses(
    secured: SecuredKafka, protocol: str, change: dict[str, str], named: str
):
    settings = _settings(secured.env(protocol, "SCRAM-SHA-512") | change)
    started = time.monotonic()
    with pytest.raises(KafkaSetupError) as refused:
        check_kafka_connection(settings, timeout=10)
    assert named in str(refused.value)
    assert time.monotonic() - started < 10
    assert USER.password not in str(refused.value)


def test_an_unreachable_broker_is_left_to_the_clients_retries(secured: SecuredKafka):
    """Not a settings problem: the check returns and the clients wait for Kafka as they always did."""
    settings = _settings(secured.env("SASL_SSL") | {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    check_kafka_connection(settings, timeout=5)
