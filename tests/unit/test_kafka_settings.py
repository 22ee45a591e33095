"""The Kafka security settings: read from the environment, refused with the variable named (never a
secret), and turned into the one kafka-python configuration every client is built from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.kafka import kafka_client_config
from shared.settings import CommonSettings

SASL = {
    "EXPORT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "EXPORT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "EXPORT_KAFKA_SASL_USERNAME": "exporter",
    "EXPORT_KAFKA_SASL_PASSWORD": "hunter2-secret",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    def set_env(values: dict[str, str]) -> CommonSettings:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return CommonSettings()

    return set_env


def refusal(env, values: dict[str, str]) -> str:
    with pytest.raises(ValidationError) as refused:
        env(values)
    return str(refused.value)


def test_the_default_is_plaintext_to_the_bootstrap_servers(env):
    settings = env({"EXPORT_KAFKA_BOOTSTRAP_SERVERS": "a:9092, b:9093"})
    assert kafka_client_config(settings) == {
        "bootstrap_servers": ["a:9092", "b:9093"],
        "security_protocol": "PLAINTEXT",
        # kafka-python's own 30 s left a consumer idle up to ~30 s after its broker was back; every client gets it.
        "reconnect_backoff_max_ms": 1_000,
    }
    assert settings.topics_create is True


def test_sasl_ssl_with_scram_becomes_the_client_configuration(env, tmp_path: Path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = env({**SASL, "EXPORT_KAFKA_SSL_CA_FILE": str(ca), "EXPORT_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    config = kafka_client_config(settings)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["ssl_cafile"] == str(ca)
    assert config["ssl_check_hostname"] is False
    assert (config["sasl_mechanism"], config["sasl_plain_username"], config["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "exporter",
        "hunter2-secret",
    )
    assert "hunter2-secret" not in repr(settings)


def test_the_password_may_come_from_a_file_without_its_final_line_break(env, tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    values = {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": "", "EXPORT_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    assert kafka_client_config(env(values))["sasl_plain_password"] == "from-a-file"


def test_mutual_tls_passes_the_client_certificate_and_key_password(env, tmp_path: Path):
    for name in ("client.crt", "client.key"):
        (tmp_path / name).write_text("pem")
    config = kafka_client_config(
        env(
            {
                "EXPORT_KAFKA_SECURITY_PROTOCOL": "SSL",
                "EXPORT_KAFKA_SSL_CERT_FILE": str(tmp_path / "client.crt"),
                "EXPORT_KAFKA_SSL_KEY_FILE": str(tmp_path / "client.key"),
                "EXPORT_KAFKA_SSL_KEY_PASSWORD": "key-pass",
            }
        )
    )
    assert config["ssl_certfile"] == str(tmp_path / "client.crt")
    assert config["ssl_keyfile"] == str(tmp_path / "client.key")
    assert config["ssl_password"] == "key-pass"
    assert "ssl_cafile" not in config  # the system's CAs
    assert "sasl_mechanism" not in config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**SASL, "EXPORT_KAFKA_SASL_MECHANISM": ""}, "EXPORT_KAFKA_SASL_MECHANISM is required"),
        ({**SASL, "EXPORT_KAFKA_SASL_USERNAME": ""}, "EXPORT_KAFKA_SASL_USERNAME is required"),
        (
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": ""},
            "EXPORT_KAFKA_SASL_PASSWORD or EXPORT_KAFKA_SASL_PASSWORD_FILE is",
        ),
        (
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"},
            "give EXPORT_KAFKA_SASL_PASSWORD or EXPORT_KAFKA_SASL_PASSWORD_FILE, not both",
        ),
        (
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": "", "EXPORT_KAFKA_SASL_PASSWORD_FILE": "/no/such/file"},
            "EXPORT_KAFKA_SASL_PASSWORD_FILE: /no/such/file does not exist",
        ),
        ({**SASL, "EXPORT_KAFKA_SSL_CA_FILE": "/no/ca.crt"}, "EXPORT_KAFKA_SSL_CA_FILE: /no/ca.crt does not exist"),
        ({**SASL, "EXPORT_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "kafka_sasl_mechanism"),
        (
            {"EXPORT_KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "EXPORT_KAFKA_SSL_CA_FILE is set but EXPORT_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {**SASL, "EXPORT_KAFKA_SECURITY_PROTOCOL": "SSL"},
            "EXPORT_KAFKA_SASL_MECHANISM is set but EXPORT_KAFKA_SECURITY_PROTOCOL is SSL",
        ),
        (
            {"EXPORT_KAFKA_SECURITY_PROTOCOL": "SSL", "EXPORT_KAFKA_SSL_KEY_FILE": "/etc/hostname"},
            "EXPORT_KAFKA_SSL_KEY_FILE is set without EXPORT_KAFKA_SSL_CERT_FILE",
        ),
        ({"EXPORT_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
    ],
    ids=[
        "no-mechanism",
        "no-username",
        "no-password",
        "two-passwords",
        "missing-password-file",
        "missing-ca",
        "oauthbearer",
        "tls-file-without-tls",
        "sasl-without-sasl",
        "key-without-certificate",
        "unknown-protocol",
    ],
)
def test_inconsistent_settings_are_refused_naming_the_variable_and_never_the_secret(env, values, message):
    said = refusal(env, values)
    assert message in said
    assert "hunter2-secret" not in said


def test_a_shorter_request_timeout_allows_a_delivery_timeout_down_to_it_and_a_second(env):
    """EXPORT_KAFKA_REQUEST_TIMEOUT_MS (the producer's, 30 s by default) bounds the delivery timeout from below: 31 s
    by default as before, 4 s with a 3 s one (before: 31 s whatever the request timeout)."""
    assert env({}).kafka_request_timeout_ms == 30_000
    assert "at least EXPORT_KAFKA_REQUEST_TIMEOUT_MS and 1000 (31000 here)" in refusal(
        env, {"EXPORT_KAFKA_DELIVERY_TIMEOUT_MS": "30999"}
    )
    assert env({"EXPORT_KAFKA_DELIVERY_TIMEOUT_MS": "31000"}).kafka_delivery_timeout_ms == 31_000
    short = env({"EXPORT_KAFKA_REQUEST_TIMEOUT_MS": "3000", "EXPORT_KAFKA_DELIVERY_TIMEOUT_MS": "4000"})
    assert (short.kafka_request_timeout_ms, short.kafka_delivery_timeout_ms) == (3_000, 4_000)
    assert "(4000 here)" in refusal(
        env, {"EXPORT_KAFKA_REQUEST_TIMEOUT_MS": "3000", "EXPORT_KAFKA_DELIVERY_TIMEOUT_MS": "3999"}
    )


#: A password with characters URLs, JAAS and shells treat apart.
ODD_SECRET = "Sx7'pa$$%w:@/#q"
JAAS = f'org.apache.kafka.common.security.plain.PlainLoginModule required username="exporter" password="{ODD_SECRET}";'


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            # kafka-python would log it at each failed attempt and quote it in "Unable to bootstrap from [...]".
            {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": f"a:9092, SASL_SSL://exporter:{ODD_SECRET}@b:9093"},
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS (server 2) holds user information ('user:password@', not shown): Kafka "
            "takes no credentials in an address; give them in EXPORT_KAFKA_SASL_USERNAME and "
            "EXPORT_KAFKA_SASL_PASSWORD",
        ),
        (
            # No port: kafka-python's int() of what follows the colon quoted the password in a ValueError.
            {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": f"exporter:{ODD_SECRET}@kafka"},
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS (server 1) holds user information",
        ),
        (
            {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": "kafka:90 92"},
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS (server 1) is not host:port (a port from 1 to 65535",
        ),
        ({"EXPORT_KAFKA_BOOTSTRAP_SERVERS": " , "}, "EXPORT_KAFKA_BOOTSTRAP_SERVERS is empty"),
        (
            # Our own refusal quotes the user name ("refused the SASL credentials of '...'").
            {**SASL, "EXPORT_KAFKA_SASL_USERNAME": JAAS},
            "EXPORT_KAFKA_SASL_USERNAME holds a JAAS configuration (a LoginModule line, not shown), not a user name",
        ),
        (
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": JAAS},
            "EXPORT_KAFKA_SASL_PASSWORD holds a JAAS configuration (a LoginModule line, not shown), not a password",
        ),
        (
            # Bytes that are not UTF-8 (os.environ reads them as surrogates): a UnicodeEncodeError traceback before.
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": f"{ODD_SECRET}\udcff"},
            "EXPORT_KAFKA_SASL_PASSWORD holds bytes that are not UTF-8 text (character 16)",
        ),
        (
            # The password given to the file's variable: before, "EXPORT_KAFKA_SASL_PASSWORD_FILE: <it> does not exist".
            {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": "", "EXPORT_KAFKA_SASL_PASSWORD_FILE": ODD_SECRET.replace("/", "")},
            "EXPORT_KAFKA_SASL_PASSWORD_FILE names no file (its value, not shown, does not read as a path",
        ),
        (
            {
                "EXPORT_KAFKA_SECURITY_PROTOCOL": "SSL",
                "EXPORT_KAFKA_SSL_CERT_FILE": "/etc/hostname",
                "EXPORT_KAFKA_SSL_KEY_FILE": f"-----BEGIN PRIVATE KEY-----\n{ODD_SECRET}\n-----END PRIVATE KEY-----",
            },
            "EXPORT_KAFKA_SSL_KEY_FILE names no file (its value, not shown",
        ),
    ],
    ids=[
        "bootstrap-user-information",
        "bootstrap-user-information-no-port",
        "bootstrap-port",
        "bootstrap-empty",
        "jaas-user-name",
        "jaas-password",
        "password-not-utf8",
        "password-file-holds-the-password",
        "key-file-holds-the-key",
    ],
)
def test_a_secret_in_the_wrong_shape_or_place_is_refused_naming_the_variable_never_the_secret(env, values, message):
    said = refusal(env, values)
    assert message in said
    for part in (ODD_SECRET, ODD_SECRET.replace("/", ""), "Sx7"):
        assert part not in said


def test_the_password_file_holding_a_jaas_line_or_bytes_that_are_not_text_is_refused_naming_the_file(
    env, tmp_path: Path
):
    jaas, binary = tmp_path / "jaas", tmp_path / "binary"
    jaas.write_text(JAAS + "\n")
    binary.write_bytes(b"Sx7\xff\xfe")
    no_literal = {**SASL, "EXPORT_KAFKA_SASL_PASSWORD": ""}
    said = refusal(env, {**no_literal, "EXPORT_KAFKA_SASL_PASSWORD_FILE": str(jaas)})
    assert f"EXPORT_KAFKA_SASL_PASSWORD_FILE: {jaas} holds a JAAS configuration" in said
    said = refusal(env, {**no_literal, "EXPORT_KAFKA_SASL_PASSWORD_FILE": str(binary)})
    assert f"EXPORT_KAFKA_SASL_PASSWORD_FILE: {binary} is not UTF-8 text (byte 4)" in said
    assert "Sx7" not in said


def test_addresses_as_kafka_python_reads_them_are_taken(env):
    """A listener's protocol before the address (Java's and kafka-python's clients drop it), IPv6 literals, no port
    (9092), and a password holding characters of a URL's are all fine where they belong."""
    servers = "SASL_SSL://kafka-0.kafka:9093, [::1]:9092, ::1, kafka-1"
    settings = env({**SASL, "EXPORT_KAFKA_BOOTSTRAP_SERVERS": servers, "EXPORT_KAFKA_SASL_PASSWORD": ODD_SECRET})
    config = kafka_client_config(settings)
    assert config["bootstrap_servers"] == ["SASL_SSL://kafka-0.kafka:9093", "[::1]:9092", "::1", "kafka-1"]
    assert config["sasl_plain_password"] == ODD_SECRET
