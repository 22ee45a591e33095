"""How the services reach Kafka, securely: ``EXPORT_KAFKA_*`` TLS and SASL settings, checked when read.

A mixin of :class:`shared.settings.CommonSettings`, so every service and exportctl read the same
variables. Validation names the variable at fault and never shows a secret (passwords are ``SecretStr``;
the settings hide input values in their errors). The files named are checked to exist when the settings
are read; whether Kafka accepts what they hold is checked at start (``shared.kafka.connection_check``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: OAUTHBEARER is not offered: kafka-python needs a token-provider object (code), not settings.
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})

_OPTIONAL = (
    "kafka_ssl_ca_file",
    "kafka_ssl_cert_file",
    "kafka_ssl_key_file",
    "kafka_ssl_key_password",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_sasl_password_file",
)


def env_name(field: str) -> str:
    """The environment variable of a settings field (``kafka_sasl_username`` → ``EXPORT_KAFKA_SASL_USERNAME``)."""
    return f"EXPORT_{field.upper()}"


class KafkaConnectionSettings(BaseSettings):
    """Where Kafka is, and TLS and SASL for every client (producers, consumers, admin)."""

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )

    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="How clients talk to Kafka: PLAINTEXT, SSL (TLS, optionally mutual), SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the brokers' certificates; empty: the system's trusted CAs.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None, description="PEM client certificate (chain) for mutual TLS; needs EXPORT_KAFKA_SSL_KEY_FILE."
    )
    kafka_ssl_key_file: Path | None = Field(default=None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted EXPORT_KAFKA_SSL_KEY_FILE."
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names the host connected to."
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL_*)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (or EXPORT_KAFKA_SASL_PASSWORD_FILE, not both)."
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="File holding the SASL password (a mounted Secret); a final line break is ignored."
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _addresses(cls, value: str) -> str:
        entries = [server.strip() for server in value.split(",") if server.strip()]
        problems = [problem for number, entry in enumerate(entries, 1) if (problem := _address_problem(entry, number))]
        if not entries:
            problems.append("EXPORT_KAFKA_BOOTSTRAP_SERVERS is empty (host:port, comma-separated)")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator(*_OPTIONAL, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # A chart or an env file writes an unset value as an empty string: that means "not given".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*self._tls_problems(), *self._sasl_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _tls_problems(self) -> list[str]:
        protocol = self.kafka_security_protocol
        given = [
            f
            for f in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file", "kafka_ssl_key_password")
            if getattr(self, f) is not None
        ]
        if protocol not in TLS_PROTOCOLS:
            return [
                f"{env_name(f)} is set but EXPORT_KAFKA_SECURITY_PROTOCOL is {protocol} (TLS needs SSL or SASL_SSL)"
                for f in given
            ]
        problems = [
            problem
            for field in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
            if (problem := _unreadable(field, getattr(self, field)))
        ]
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            problems.append(
                "EXPORT_KAFKA_SSL_KEY_FILE is set without EXPORT_KAFKA_SSL_CERT_FILE (the client certificate)"
            )
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_cert_file is None:
            problems.append(
                "EXPORT_KAFKA_SSL_KEY_PASSWORD is set without a client certificate (EXPORT_KAFKA_SSL_CERT_FILE)"
            )
        return problems

    def _sasl_problems(self) -> list[str]:
        protocol = self.kafka_security_protocol
        given = [
            f
            for f in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password", "kafka_sasl_password_file")
            if getattr(self, f) is not None
        ]
        if protocol not in SASL_PROTOCOLS:
            return [
                f"{env_name(f)} is set but EXPORT_KAFKA_SECURITY_PROTOCOL is {protocol} "
                "(SASL needs SASL_SSL or SASL_PLAINTEXT)"
                for f in given
            ]
        problems = []
        if self.kafka_sasl_mechanism is None:
            problems.append(
                f"EXPORT_KAFKA_SASL_MECHANISM is required with EXPORT_KAFKA_SECURITY_PROTOCOL={protocol} "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if self.kafka_sasl_username is None:
            problems.append(f"EXPORT_KAFKA_SASL_USERNAME is required with EXPORT_KAFKA_SECURITY_PROTOCOL={protocol}")
        elif problem := _credential_problem("EXPORT_KAFKA_SASL_USERNAME", self.kafka_sasl_username, "user name"):
            problems.append(problem)
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            problems.append("give EXPORT_KAFKA_SASL_PASSWORD or EXPORT_KAFKA_SASL_PASSWORD_FILE, not both")
        elif self.kafka_sasl_password is None and self.kafka_sasl_password_file is None:
            problems.append(
                f"EXPORT_KAFKA_SASL_PASSWORD or EXPORT_KAFKA_SASL_PASSWORD_FILE is required with "
                f"EXPORT_KAFKA_SECURITY_PROTOCOL={protocol}"
            )
        elif self.kafka_sasl_password_file is not None:
            problems += [p for p in [_unreadable("kafka_sasl_password_file", self.kafka_sasl_password_file)] if p]
            if not problems:
                problems += _password_file_problems(self.kafka_sasl_password_file)
        if self.kafka_sasl_password is not None:
            password = self.kafka_sasl_password.get_secret_value()
            if not password:
                problems.append("EXPORT_KAFKA_SASL_PASSWORD is empty")
            elif problem := _credential_problem("EXPORT_KAFKA_SASL_PASSWORD", password, "password"):
                problems.append(problem)
        return problems

    def kafka_sasl_password_value(self) -> str | None:
        """The SASL password, read from its file when it is given by one (read again at each call: a rotated
        Secret is taken by the next client built); None without SASL."""
        if self.kafka_sasl_password_file is not None:
            return _read_password(self.kafka_sasl_password_file)
        return self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password is not None else None

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in TLS_PROTOCOLS

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol in SASL_PROTOCOLS


#: A JAAS line (what a Java client is given): ``...LoginModule required username="..." password="...";``.
_JAAS = re.compile(r"LoginModule|\bpassword\s*=", re.IGNORECASE)
#: What kafka-python strips from a bootstrap server, as Java's client does (``SASL_SSL://host:9093``).
_PROTOCOL_PREFIX = re.compile(r"^.*://")
#: The settings whose file may hold a secret (a password, a private key): a value that does not read as a path
#: is not shown when it names no file, for it may be the secret itself, given to the wrong variable.
_SECRET_FILES = frozenset({"kafka_sasl_password_file", "kafka_ssl_key_file", "kafka_ssl_cert_file"})


def _address_problem(entry: str, number: int) -> str | None:
    """Why the ``number``-th entry of ``EXPORT_KAFKA_BOOTSTRAP_SERVERS`` is no ``host:port``, or None; never the
    entry itself: one holding user information holds a password (``SASL_SSL://user:password@host:9093``), which
    kafka-python would log with every failed attempt and quote in its errors."""
    which = f"EXPORT_KAFKA_BOOTSTRAP_SERVERS (server {number})"
    if "@" in entry:
        return (
            f"{which} holds user information ('user:password@', not shown): Kafka takes no credentials in an "
            "address; give them in EXPORT_KAFKA_SASL_USERNAME and EXPORT_KAFKA_SASL_PASSWORD"
        )
    host, port = split_address(entry)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{which} is not host:port (a port from 1 to 65535, e.g. kafka-0.kafka:9092)"
    return None


def split_address(server: str) -> tuple[str, str]:
    """A bootstrap server's host and port, read as kafka-python reads it: a ``PROTOCOL://`` prefix dropped, an
    IPv6 literal in brackets, port 9092 when none is given."""
    address = _PROTOCOL_PREFIX.sub("", server.strip())
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.removeprefix(":") if rest else "9092"
    if ":" not in address:
        return address, "9092"
    if address.count(":") > 1:  # an IPv6 literal without brackets: no port
        return address, "9092"
    host, _, port = address.rpartition(":")
    return host, port


def _credential_problem(source: str, value: str, what: str) -> str | None:
    """Why a SASL user name or password (from ``source``: a variable, or a file) cannot be what it should, or None;
    never the value."""
    if _JAAS.search(value):
        return (
            f"{source} holds a JAAS configuration (a LoginModule line, not shown), not a {what}: give the user name "
            "alone in EXPORT_KAFKA_SASL_USERNAME and the password alone in EXPORT_KAFKA_SASL_PASSWORD (or "
            "EXPORT_KAFKA_SASL_PASSWORD_FILE)"
        )
    try:
        value.encode()
    except UnicodeEncodeError as exc:  # bytes of the environment that are not UTF-8 (read as surrogates)
        return f"{source} holds bytes that are not UTF-8 text (character {exc.start + 1})"
    return None


def _password_file_problems(path: Path) -> list[str]:
    try:
        password = _read_password(path)
    except UnicodeDecodeError as exc:
        return [f"EXPORT_KAFKA_SASL_PASSWORD_FILE: {path} is not UTF-8 text (byte {exc.start + 1})"]
    if not password:
        return [f"EXPORT_KAFKA_SASL_PASSWORD_FILE: {path} is empty"]
    problem = _credential_problem(f"EXPORT_KAFKA_SASL_PASSWORD_FILE: {path}", password, "password")
    return [problem] if problem else []


def _reads_as_path(value: str) -> bool:
    """Whether a file setting's value reads as a file's path (shown when it names no file) rather than as what the
    file should hold: a ``/``, and no space, line break or control character."""
    return "/" in value and not any(c.isspace() or not c.isprintable() for c in value)


def _unreadable(field: str, path: Path | None) -> str | None:
    """Why the file of ``field`` cannot be read (its path is no secret: its content may be), or None."""
    if path is None:
        return None
    if not path.exists():
        if field in _SECRET_FILES and not _reads_as_path(str(path)):
            return (
                f"{env_name(field)} names no file (its value, not shown, does not read as a path: is it what the file "
                "should hold? give the path of a file holding it)"
            )
        return f"{env_name(field)}: {path} does not exist"
    if not path.is_file():
        return f"{env_name(field)}: {path} is not a file"
    if not os.access(path, os.R_OK):
        return f"{env_name(field)}: {path} cannot be read by this process"
    return None


def _read_password(path: Path) -> str:
    # A Secret written with `echo` ends with a line break that is not part of the password.
    return path.read_text().removesuffix("\n").removesuffix("\r")
