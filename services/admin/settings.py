"""The admin API's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import CommonSettings


class AdminSettings(CommonSettings):
    """Settings of the admin API service."""

    admin_host: str = Field(default="0.0.0.0", description="Address the admin API listens on.")  # noqa: S104
    admin_port: int = Field(default=8080, ge=1, le=65535, description="Port of the admin API (also serves /metrics).")
    admin_tokens_file: str = Field(
        default="",
        description="YAML file of API tokens (`tokens: [{name, sha256, role, business_units}]`), e.g. a mounted "
        "Kubernetes Secret. Without it every call but health and metrics gets 401.",
    )
    query_store_url: str = Field(
        default="sqlite:///.local/members.db", description="Member store the dry run reads its first members from."
    )
    admin_public_url: str = Field(
        default="", description="Base URL the API is reached at, for links in responses (empty: relative links)."
    )
    admin_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1_024,
        description="Largest request body the admin API reads (bigger: 413); unauthenticated writes are refused "
        "before their body is read.",
    )
    admin_shutdown_seconds: int = Field(
        default=20,
        ge=1,
        le=3_600,
        description="On SIGTERM, how long requests in hand (e.g. a client still sending its body) may take to finish "
        "before uvicorn cancels them and the process closes and ends; keep it below the pod's "
        "terminationGracePeriodSeconds (the chart's: 30) by 5 s or more, or Kubernetes kills it first (137). Then "
        "the Kafka producer gets what is left of it, 5 s at least, to have the records it holds acknowledged; a "
        "write still waiting for its acknowledgement then is abandoned, its outcome unknown (its request was "
        "answered 500 when cancelled). A request's thread still in a catalog or member-store call (a dry run's slow "
        "query) holds the process's end until the call returns.",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Unused by the admin API: /metrics is on its port."
    )
    # --- the web console (services/admin/console), served under /console by the same process ---
    console_session_key: SecretStr = Field(
        default=SecretStr(""),
        description="Key encrypting and signing the console's session cookies (any long random string; give every "
        "admin replica the same one, e.g. from a Kubernetes Secret). Empty: a random key per process, so sessions "
        "end when it restarts and hold only on the replica that signed them.",
    )
    console_session_minutes: int = Field(
        default=480,
        ge=5,
        le=10_080,
        description="How long a console session lasts after sign-in (then the token is asked again).",
    )
    console_secure_cookies: bool = Field(
        default=True,
        description="Send the console's cookies with Secure (HTTPS only); false only for plain http on localhost "
        "(`make up`, tests).",
    )
    extractor_max_record_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="The record byte bound of a dead-letter replay started from the console (the extractor's setting).",
    )
