"""Settings common to every service, read from ``EXPORT_*`` environment variables (pydantic-settings).

Each service subclasses :class:`CommonSettings` once, adding its own fields, and builds it once at
start (its composition root). Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.domain.secret_references import DEFAULT_DIRECTORIES, DEFAULT_ENV_PREFIXES, SecretReferencePolicy
from shared.kafka_settings import KafkaConnectionSettings, env_name
from shared.secrets_at_rest import SecretCipher
from shared.topics import Topics

#: A database URL's user information as SQLAlchemy reads it: the user up to ``:`` or ``/``, the password up to the
#: first ``@``. What follows that ``@`` is read as the host, port and database.
_USER_INFORMATION = re.compile(r"^[^:/]*(?::[^@]*)?@")


def database_url_problem(url: str) -> str | None:
    """Why a database URL would be misread, or None; never the URL. A password holding an ``@`` not percent-encoded
    (``postgresql+psycopg://app:p@ss@db/catalog``) ends at that ``@`` for SQLAlchemy, and the rest of it becomes
    the host: the driver's error then quotes it (``failed to resolve host 'ss@db'``), at start and in every
    failure reason (a run's, an email's) the store's errors reach."""
    _, scheme_end, rest = url.partition("://")
    found = _USER_INFORMATION.match(rest.split("?", 1)[0]) if scheme_end else None
    if found is not None and "@" in rest.split("?", 1)[0][found.end() :]:
        return (
            "holds an '@' after its user information (the URL is not shown): a password holding '@' must be "
            "percent-encoded, '@' as %40 (and ':' as %3A, '/' as %2F)"
        )
    return None


def default_replica_id() -> str:
    """This process's name among its service's replicas (host name and process id): a process restarted in the same
    container (same host name, same process id) has the same name again."""
    return f"{socket.gethostname()}-{os.getpid()}"


class CommonSettings(KafkaConnectionSettings):
    """What all services share: Kafka (how to reach it comes from :class:`KafkaConnectionSettings`), the
    catalog, topics, logging and metrics."""

    # hide_input_in_errors: a refused value may be a password or a URL holding one; the message names the
    # variable and the reason, never the value.
    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore", hide_input_in_errors=True)

    topic_prefix: str = Field(default="", description="Prefix applied to every topic name.")
    topic_partitions: int = Field(default=6, ge=1, description="Partitions of topics the services create.")
    topic_replication_factor: int = Field(default=1, ge=1, description="Replication of created topics.")
    topics_create: bool = Field(
        default=True,
        description="Create missing topics at start; false: only check that they exist and refuse to start "
        "naming the missing ones (topics owned by ops, e.g. Strimzi KafkaTopic resources; no CREATE ACL needed).",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        le=300_000,
        description="How long a silent consumer keeps its partitions: a crashed replica's work moves on after this.",
    )
    kafka_request_timeout_ms: int = Field(
        default=30_000,
        ge=1_000,
        le=300_000,
        description="How long a producer waits for the broker to answer one request before it gives that request "
        "up and tries again, within the delivery timeout (which must be at least this and a second); exportctl's "
        "connection check waits this long, 10 s at most, for a broker that answers nothing.",
    )
    kafka_delivery_timeout_ms: int = Field(
        default=120_000,
        # At least the request timeout and a second (checked below): the client refuses a delivery timeout shorter
        # than its request timeout and linger (5 ms); 31,000 with the default request timeout.
        ge=2_000,
        le=900_000,
        description="How long a produced record may wait for the broker (restarting, unreachable) before its send "
        "fails; the records of a poll whose outcome could not be produced are handled again after it.",
    )
    # 512 KiB: the dispatcher's outcomes of a round (64 batches of 500 members, ~5.5 KB each, one run's partition)
    # went in ~20 batches of the client's default 16 KiB, one request at a time (one in flight, one batch per
    # partition a request): ~0.25 s a round waiting for acks on a busy broker. Records bigger than this still go
    # alone; below the broker's default message.max.bytes (1 MiB), which the client splits a refused batch under.
    kafka_batch_bytes: int = Field(
        default=524_288,
        ge=16_384,
        le=4 * 1024 * 1024,  # the producer's max_request_size
        description="Bytes of records to one partition the producer sends as one batch (one request at a time "
        "carries one batch per partition): a poll's outcomes to one run's partition go in one request.",
    )
    kafka_compression: Literal["lz4", "gzip", "snappy", "zstd", "none"] = Field(
        default="lz4",
        description="Compression of produced records (lz4 measured 4x faster than gzip here; see README).",
    )
    catalog_url: str = Field(
        default="sqlite:///.local/catalog.db",
        description="SQLAlchemy URL of the catalog (profiles, templates, queries, definitions, runs).",
    )
    allowed_destinations: str = Field(
        default="",
        description="SSRF guard exceptions: comma-separated hosts and CIDRs that exports may reach although "
        "they are not public addresses (e.g. 127.0.0.1, 10.0.0.0/8, partner.internal).",
    )
    allowed_proxies: str = Field(
        default="",
        description="Comma-separated hosts and CIDRs of forward proxies a connection profile may name although "
        "they are not public addresses (the proxy only: each partner behind it still passes the SSRF guard).",
    )
    allowed_secret_env_prefixes: str = Field(
        default=DEFAULT_ENV_PREFIXES,
        description="Comma-separated prefixes of the environment variables that env: secret references may name "
        "(never the services' own EXPORT_ settings, EXPORT_SECRET_ excepted); empty: no env: reference.",
    )
    allowed_secret_dirs: str = Field(
        default=DEFAULT_DIRECTORIES,
        description="Comma-separated directories the files of file: secret references must be in (symbolic links "
        "followed); empty: no file: reference.",
    )
    catalog_encryption_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated Fernet keys encrypting literal secrets in the catalog: the first encrypts, all "
        "decrypt (rotation: `exportctl secrets rotate`); empty: literal secrets are stored in plain text.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["json", "console"] = Field(default="json", description="Log line format.")
    # Shared: the extractor enforces it, the admin API and exportctl refuse a saved query asking for more,
    # and read the member store under it (column discovery, render checks, dry runs).
    extractor_query_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest a query page may take before it is cancelled and the run fails; a saved query's "
        "timeout_seconds can only shorten it (a larger one is refused at save).",
    )
    audit_retention_days: int = Field(
        default=365, ge=1, description="Days the audit log keeps each change (older entries are deleted)."
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 turns it off."
    )

    @model_validator(mode="after")
    def _delivery_outlasts_a_request(self) -> Self:
        if self.kafka_delivery_timeout_ms < self.kafka_request_timeout_ms + 1_000:
            raise ValueError(
                "EXPORT_KAFKA_DELIVERY_TIMEOUT_MS must be at least EXPORT_KAFKA_REQUEST_TIMEOUT_MS and 1000 "
                f"({self.kafka_request_timeout_ms + 1_000} here)"
            )
        return self

    @field_validator("allowed_secret_env_prefixes")
    @classmethod
    def _env_prefixes_parse(cls, value: str) -> str:
        SecretReferencePolicy.parse(env_prefixes=value)
        return value

    @field_validator("catalog_url", "query_store_url", check_fields=False)  # the latter: the services that read it
    @classmethod
    def _database_url_read_as_meant(cls, value: str, info: ValidationInfo) -> str:
        if problem := database_url_problem(value):
            raise ValueError(f"{env_name(info.field_name or '')} {problem}")
        return value

    @field_validator("allowed_secret_dirs")
    @classmethod
    def _directories_parse(cls, value: str) -> str:
        SecretReferencePolicy.parse(directories=value)
        return value

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def secret_references(self) -> SecretReferencePolicy:
        """Which environment variables and files secret references may name (checked at save and at dispatch)."""
        return SecretReferencePolicy.parse(self.allowed_secret_env_prefixes, self.allowed_secret_dirs)

    def secret_cipher(self) -> SecretCipher | None:
        """The cipher of ``EXPORT_CATALOG_ENCRYPTION_KEYS``, None when it is empty; ValueError naming a bad key."""
        return SecretCipher.from_setting(self.catalog_encryption_keys)
