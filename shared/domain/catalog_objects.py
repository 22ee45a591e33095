"""The objects admins define, as the reference platform defines them (BRIEF section 2).

Each is a pydantic model: the YAML of ``exportctl apply``, the catalog's stored form and (later) the
admin API all validate through these classes, so one set of rules holds everywhere.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from shared.domain.names import Name
from shared.domain.query_parameters import RESERVED_PREFIX, QueryParameter, bind_names
from shared.domain.schedule import Schedule

# The wire contract owns the enum (batches carry it); re-exported here for the domain's importers.
from shared.events import Priority as Priority

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_column(column: str) -> str:
    if not _IDENTIFIER.match(column):
        raise ValueError("must be a plain column name (letters, digits, underscore)")
    return column


#: A column named in SQL we write around the saved query: letters, digits and underscores only.
ColumnName = Annotated[str, AfterValidator(_plain_column)]


#: A credential: a literal (write-only) or an ``env:``/``file:`` reference. Answered masked by the admin API
#: (so not ``writeOnly`` in its schema: the mask is in every response, and may be sent back to keep it).
Secret = Annotated[
    SecretStr,
    WithJsonSchema({"type": "string", "description": "a secret or an env:/file: reference; answered masked"}),
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- Connection profiles ---------------------------------------------------------------------------


class NoAuth(_Spec):
    type: Literal["none"] = "none"


class BasicAuth(_Spec):
    type: Literal["basic"]
    username: str
    password: Secret


class BearerAuth(_Spec):
    type: Literal["bearer"]
    token: Secret


class ApiKeyAuth(_Spec):
    """An API key sent in a header of the partner's choosing."""

    type: Literal["api_key"]
    header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")] = "X-API-Key"
    key: Secret


class OAuth2ClientCredentials(_Spec):
    """OAuth 2.0 client credentials; stored now, exchanged for tokens by the dispatcher (issue 5)."""

    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: Secret
    scope: str | None = None


Auth = Annotated[NoAuth | BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials, Field(discriminator="type")]


class RateLimit(_Spec):
    """How hard the partner may be called, per dispatcher replica.

    ``requests_per_second`` (with ``burst``) is slowed down on 429 and recovered on success;
    ``max_in_flight`` bounds the batches being delivered to the profile at once (retries included).
    """

    requests_per_second: Annotated[float, Field(gt=0, le=100_000)] | None = None
    burst: Annotated[int, Field(ge=1, le=10_000)] = 1
    max_in_flight: Annotated[int, Field(ge=1, le=1_000)] | None = None

    @model_validator(mode="after")
    def _something_is_limited(self) -> RateLimit:
        if self.requests_per_second is None and self.max_in_flight is None:
            raise ValueError("set requests_per_second, max_in_flight, or both")
        return self


class ConnectionProfile(_Spec):
    """Where and how to reach a partner API: a base URL and its authentication."""

    name: Name
    label: str | None = Field(default=None, max_length=200)
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    auth: Auth = NoAuth()
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0
    #: Standard Webhooks signing secret (``whsec_…``, or an ``env:``/``file:`` reference to one): when set,
    #: every request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``.
    signing_secret: Secret | None = None
    rate_limit: RateLimit | None = None


# --- HTTP API templates ----------------------------------------------------------------------------


class HttpMethod(StrEnum):
    POST = "POST"
    GET = "GET"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class HttpTemplate(_Spec):
    """An HTTP operation: what request a batch of members becomes.

    ``path`` is appended to the profile's base URL. ``path``, each ``query_string`` value, each header
    value and ``body`` are sandboxed Jinja2 templates rendered with ``members`` (the batch, a list of
    column→value mappings), ``member`` (its first member, for a batch size of 1) and ``run`` (run
    metadata); ``query_string`` values are URL-encoded; the body must render JSON. Without a body, the
    batch is sent as a JSON array of members.
    """

    name: Name
    label: str | None = Field(default=None, max_length=200)
    query: Name
    profile: Name
    method: HttpMethod = HttpMethod.POST
    path: str = "/"
    query_string: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    success_statuses: list[Annotated[int, Field(ge=100, le=599)]] | None = None

    @field_validator("path")
    @classmethod
    def _path_is_relative(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/': it is appended to the connection profile's base URL")
        return path


# --- Saved queries ---------------------------------------------------------------------------------


class SavedQuery(_Spec):
    """A named, read-only query over the member store (the reference platform's "Bigdata Query").

    ``key_column`` is unique and sortable (the member id): the extractor pages by it. ``parameters``
    declares the query's ``:name`` bind parameters and their types. ``columns`` is what the query
    returns, discovered from the query store when the query is saved (``exportctl apply``), so that
    templates can be checked against it. ``timeout_seconds`` overrides the extractor's page timeout.
    """

    name: Name
    label: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2_000)
    sql: str
    key_column: ColumnName = "id"
    parameters: dict[str, QueryParameter] = Field(default_factory=dict)
    columns: list[str] = Field(default_factory=list)
    timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None

    @field_validator("sql")
    @classmethod
    def _single_select(cls, sql: str) -> str:
        stripped = sql.strip().rstrip(";").strip()
        if ";" in stripped:
            raise ValueError("must be a single statement")
        if not re.match(r"(?is)^(select|with)\b", stripped):
            raise ValueError("must be a SELECT query")
        return stripped

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, parameters: dict[str, QueryParameter]) -> dict[str, QueryParameter]:
        for name in parameters:
            if not _IDENTIFIER.match(name) or name.startswith(RESERVED_PREFIX):
                raise ValueError(
                    f"'{name}' is not a valid parameter name (letters, digits, underscore; "
                    f"not starting with '{RESERVED_PREFIX}')"
                )
        return parameters

    @model_validator(mode="after")
    def _binds_are_declared(self) -> SavedQuery:
        undeclared = [name for name in bind_names(self.sql) if name not in self.parameters]
        if undeclared:
            raise ValueError(
                "sql uses undeclared parameter(s) "
                + ", ".join(f":{name}" for name in undeclared)
                + "; declare them under 'parameters' with their type"
            )
        return self


class Incremental(_Spec):
    """Incremental mode: export only members whose ``watermark_column`` moved since the last successful run."""

    watermark_column: ColumnName


# --- Export definitions ----------------------------------------------------------------------------


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
Email = Annotated[str, Field(pattern=EMAIL_PATTERN)]


class Notification(_Spec):
    enabled: bool = False
    recipients: list[Email] = Field(default_factory=list)

    @model_validator(mode="after")
    def _enabled_needs_recipients(self) -> Notification:
        if self.enabled and not self.recipients:
            raise ValueError("needs at least one recipient when enabled")
        return self


class Notifications(_Spec):
    """Step 4, *Notifications*: who hears about errors and about successes."""

    error: Notification = Notification()
    success: Notification = Notification()


class FailurePolicy(_Spec):
    """Beyond the reference platform: when a run with some failures counts as failed, and when to stop."""

    #: A run that completes with errors is *failed* when more than this share of its members failed.
    max_failure_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    #: Disable the schedule after this many consecutive failed runs (said in the error email).
    pause_after_failed_runs: Annotated[int, Field(ge=1, le=100)] | None = None


class ExportDefinition(_Spec):
    """An export: Filter (query, its parameter values, full or incremental), Destination (template),
    Schedule and Notifications."""

    name: Name
    label: str | None = Field(default=None, max_length=200)
    business_unit: str | None = Field(default=None, max_length=100)
    priority: Priority = Priority.NORMAL
    query: Name
    template: Name
    parameters: dict[str, Any] = Field(default_factory=dict)
    incremental: Incremental | None = None
    schedule: Schedule = Schedule()
    notifications: Notifications = Notifications()
    failure_policy: FailurePolicy = FailurePolicy()


CatalogObject = ConnectionProfile | HttpTemplate | SavedQuery | ExportDefinition

#: The kinds, in dependency order: an object refers only to kinds listed before its own.
KINDS: dict[str, type[CatalogObject]] = {
    "ConnectionProfile": ConnectionProfile,
    "SavedQuery": SavedQuery,
    "HttpTemplate": HttpTemplate,
    "ExportDefinition": ExportDefinition,
}


def references(obj: CatalogObject) -> list[tuple[type[CatalogObject], str, str]]:
    """The objects ``obj`` refers to, as (kind, name, field)."""
    if isinstance(obj, HttpTemplate):
        return [(SavedQuery, obj.query, "query"), (ConnectionProfile, obj.profile, "profile")]
    if isinstance(obj, ExportDefinition):
        return [(SavedQuery, obj.query, "query"), (HttpTemplate, obj.template, "template")]
    return []


def kind_of(obj: CatalogObject) -> str:
    """The YAML ``kind`` of a catalog object."""
    return type(obj).__name__


def stored_form(obj: CatalogObject) -> dict[str, Any]:
    """The JSON the catalog stores: secrets included, as written (a literal or a reference)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [reveal(v) for v in value]
        return value

    stored: dict[str, Any] = to_jsonable_python(reveal(obj.model_dump(mode="python")))
    return stored


def query_consistency_problems(definition: ExportDefinition, query: SavedQuery) -> list[str]:
    """What in ``definition`` does not fit its query: undeclared parameters, a watermark the query lacks.

    Each problem names the definition's field. Column checks need ``query.columns`` (discovered at save);
    without them only the parameters are checked.
    """
    problems = [
        f"field 'parameters.{name}': query '{query.name}' declares no such parameter"
        for name in definition.parameters
        if name not in query.parameters
    ]
    if definition.incremental and query.columns and definition.incremental.watermark_column not in query.columns:
        problems.append(
            f"field 'incremental.watermark_column': query '{query.name}' returns no column "
            f"'{definition.incremental.watermark_column}' (it returns: {', '.join(query.columns)})"
        )
    return problems
