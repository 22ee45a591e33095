"""The objects admins define, as the reference platform defines them (BRIEF section 2).

Each is a pydantic model: the YAML of ``exportctl apply``, the catalog's stored form and (later) the
admin API all validate through these classes, so one set of rules holds everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, cast
from urllib.parse import unquote_plus, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from shared.domain.body_types import BodyType, body_type_problem
from shared.domain.circuit_breaker import CircuitBreakerSettings
from shared.domain.email_retries import is_one_address
from shared.domain.http_fields import header_name_problem, source_problem
from shared.domain.member_retries import RetryRejected
from shared.domain.names import Name
from shared.domain.pem import PRIVATE_KEY_MISPLACED, holds_private_key
from shared.domain.query_parameters import (
    RESERVED_PREFIX,
    QueryParameter,
    bind_names,
    coerce,
    required_problem,
    unset_required,
)
from shared.domain.query_sql import check_select
from shared.domain.schedule import Schedule
from shared.domain.secret_names import secret_query_name
from shared.domain.secret_references import is_reference
from shared.domain.stored_rows import DECRYPT_SECRET, read_as_saved
from shared.domain.strict_values import StrictBool
from shared.domain.sync_mode import Sync

# The wire contract owns the enum (batches carry it); re-exported here for the domain's importers.
from shared.events import Priority as Priority

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_column(column: str) -> str:
    if not _IDENTIFIER.match(column):
        raise ValueError("must be a plain column name (letters, digits, underscore)")
    return column


#: A column named in SQL we write around the saved query: letters, digits and underscores only.
ColumnName = Annotated[str, AfterValidator(_plain_column)]


#: The longest label an object may have.
LABEL_MAX_LENGTH = 200
#: Objects and lists in one another that a definition's parameter value may hold (a json_body: its own bound, as deep).
NESTING_MAX_DEPTH = 64
#: How long a json_body's problem is told at most (its place's middle left out): a 422's message stays short.
STRUCTURE_PROBLEM_LENGTH = 300
#: How the catalog stores a literal secret encrypted at rest: ``{"encrypted": "<token>"}`` (see :func:`stored_form`).
ENCRYPTED = "encrypted"


def _decrypt_stored(value: Any, info: ValidationInfo) -> Any:
    """A secret stored encrypted is decrypted by the function the validation context gives, if any.

    Without one (any input but the catalog's own rows), ``{"encrypted": …}`` is not a string and is refused.
    """
    decrypt = info.context.get(DECRYPT_SECRET) if isinstance(info.context, dict) else None
    if (
        decrypt is not None
        and isinstance(value, dict)
        and set(value) == {ENCRYPTED}
        and isinstance(value[ENCRYPTED], str)
    ):
        return decrypt(value[ENCRYPTED])
    return value


#: A credential: a literal (write-only) or an ``env:``/``file:`` reference. Answered masked by the admin API
#: (so not ``writeOnly`` in its schema: the mask is in every response, and may be sent back to keep it).
Secret = Annotated[
    SecretStr,
    BeforeValidator(_decrypt_stored),
    WithJsonSchema({"type": "string", "description": "a secret or an env:/file: reference; answered masked"}),
]


def holds_credentials(text: str) -> bool:
    """Whether ``text`` is a URL with user information (``user:password@host``), which ``_without_credentials``
    refuses: a credential, never to be shown again (text that is no URL holds none)."""
    try:
        return "@" in urlsplit(text.strip()).netloc
    except ValueError:
        return False


def _without_credentials(url: str) -> str:
    # Never the URL in the message: its user information is a credential.
    if "@" in urlsplit(url).netloc:
        raise ValueError(
            "must not hold credentials (user:password@host): give them in the profile's auth "
            "(basic, bearer, api_key or oauth2_client_credentials), where they are stored as secrets"
        )
    return url


def _secret_query_fields(url: str) -> list[tuple[str, str]]:
    """``url``'s query fields as ``(name, field)``, a field ``name=value`` whose name says it holds a credential
    marked by its name, by the one rule the logs and the attempt inspector mask query values by
    (:func:`~shared.domain.secret_names.secret_query_name`); None for the others."""
    return [
        (name, field)
        for field in urlsplit(url).query.split("&")
        if "=" in field and secret_query_name(name := unquote_plus(field.partition("=")[0]))
    ]


def _without_query_credentials(url: str, info: ValidationInfo) -> str:
    """A URL saved holds no credential in its query (``?api_key=...``): readers would see it, the audit log keep it,
    and it would not be encrypted at rest. Never the value in the message, only the parameter's name. The catalog's
    own rows are read as saved: a profile saved by an older release still loads and runs (reads mask the value:
    :func:`shown_url`)."""
    if read_as_saved(info):
        return url
    names = sorted({name for name, _ in _secret_query_fields(url)})
    if names:
        shown = ", ".join(repr(name[:40]) for name in names[:5])
        raise ValueError(
            f"must not hold a credential in its query (parameter {shown}): give it in the profile's auth as a secret "
            "(encrypted at rest, answered masked; or an env:NAME / file:PATH reference): a partner's key as "
            "{type: api_key, header: <the header the partner reads>, key: ...}, or, for a partner that reads it only "
            "in the query, {type: api_key, in: query, name: <the parameter>, key: ...} (sent in each request's query); "
            "an OAuth client's as auth.client_secret"
        )
    return url


def shown_url(url: str) -> str:
    """A profile's URL as every read shows it (JSON: the admin API, ``exportctl get``, the console, the audit log):
    the values of query parameters named like credentials masked (``?api_key=**********``). Saving refuses such a
    query (:func:`_without_query_credentials`); a profile stored before that shows its key to no reader."""
    fields = dict(_secret_query_fields(url))
    if not fields:
        return url
    secret = set(fields.values())
    query = "&".join(
        f"{field.partition('=')[0]}={_ANSWERED_MASK}" if field in secret else field
        for field in urlsplit(url).query.split("&")
    )
    return urlsplit(url)._replace(query=query).geturl()


#: A profile's ``base_url`` or OAuth ``token_url``: no user information, no credential in its query (at save), such
#: values masked in JSON (:func:`shown_url`).
PartnerUrl = Annotated[
    str,
    AfterValidator(_without_credentials),
    AfterValidator(_without_query_credentials),
    PlainSerializer(shown_url, return_type=str, when_used="json"),
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


#: The header an API key is sent in (``in: header``) unless the profile names one.
DEFAULT_API_KEY_HEADER = "X-API-Key"
#: Why an API key sent in the query refuses a ``header`` (``auth.header``), whichever entry point saves it.
QUERY_KEY_HEADER = (
    "not used when in is query (the key travels in the query parameter auth.name, in no header): remove header, "
    "or set in: header to send the key in that header"
)


class ApiKeyAuth(_Spec):
    """An API key sent in a header of the partner's choosing (``in: header``, the default), or as a query parameter
    (``in: query`` with ``name``, for a partner that reads its key only there): appended, URL-encoded, to each
    request's URL at dispatch, after the template's own query. A secret either way (encrypted at rest, answered
    masked, ``env:``/``file:`` references resolved at dispatch); its value is masked in failure reasons and the
    attempt inspector whatever the parameter's name. ``header`` goes with ``in: header`` only: with ``in: query`` it is
    refused when saved (it would be ignored); a profile saved so before still loads and runs, and is answered and
    stored again without it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    type: Literal["api_key"]
    in_: Annotated[Literal["header", "query"], Field(alias="in")] = "header"
    #: The header the key is sent in (``in: header``; ``X-API-Key`` when not given); None with ``in: query``.
    header: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9-]+$",
            description="the header the key is sent in, with in: header (X-API-Key when not given); not with in: query",
        ),
    ] = None
    #: The query parameter (``in: query`` only).
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._~-]+$")] | None = None
    key: Secret

    @model_validator(mode="before")
    @classmethod
    def _header_of_its_place(cls, data: Any, info: ValidationInfo) -> Any:
        # A key in a header: X-API-Key unless named. A key in the query read as saved: the header an older release
        # stored beside it (its default, or one given and ignored) is dropped, never sent (refused when saved).
        if not isinstance(data, dict):
            return data
        place = data.get("in", data.get("in_", "header"))
        if place == "header" and "header" not in data:
            return data | {"header": DEFAULT_API_KEY_HEADER}
        if place == "query" and "header" in data and read_as_saved(info):
            return {name: value for name, value in data.items() if name != "header"}
        return data

    @field_validator("header")
    @classmethod
    def _header_with_header(cls, header: str | None, info: ValidationInfo) -> str | None:
        place = info.data.get("in_")
        if header is not None and place == "query":  # it would be ignored
            raise ValueError(QUERY_KEY_HEADER)
        if header is None and place == "header":
            raise ValueError(
                f"the header the key is sent in with in: header (leave it out for {DEFAULT_API_KEY_HEADER})"
            )
        return header

    @model_validator(mode="after")
    def _name_with_query(self) -> ApiKeyAuth:
        if (self.in_ == "query") != (self.name is not None):
            raise ValueError("name (the query parameter the partner reads) goes with in: query, and only with it")
        return self


class OAuth2ClientCredentials(_Spec):
    """OAuth 2.0 client credentials; stored now, exchanged for tokens by the dispatcher (issue 5)."""

    type: Literal["oauth2_client_credentials"]
    token_url: PartnerUrl
    client_id: str
    client_secret: Secret
    scope: str | None = None


Auth = Annotated[NoAuth | BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials, Field(discriminator="type")]


class RateLimit(_Spec):
    """How hard the partner may be called, across all dispatcher replicas (each applies its share).

    ``requests_per_second`` (with ``burst``) is slowed down on 429 and recovered on success;
    ``max_in_flight`` bounds the batches being delivered to the profile at once (retries included).
    """

    # The schema says what _something_is_limited enforces, so that clients can check before sending.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["requests_per_second"], "properties": {"requests_per_second": {"type": "number"}}},
                {"required": ["max_in_flight"], "properties": {"max_in_flight": {"type": "integer"}}},
            ]
        }
    )

    requests_per_second: Annotated[float, Field(gt=0, le=100_000)] | None = None
    burst: Annotated[int, Field(ge=1, le=10_000)] = 1
    max_in_flight: Annotated[int, Field(ge=1, le=1_000)] | None = None

    @model_validator(mode="after")
    def _something_is_limited(self) -> RateLimit:
        if self.requests_per_second is None and self.max_in_flight is None:
            raise ValueError("set requests_per_second, max_in_flight, or both")
        return self


def _pem_or_reference(value: str) -> str:
    # Certificates are public: the message may say what is wrong, but never quotes the value.
    if is_reference(value):
        return value
    if holds_private_key(value):
        # A pasted client.pem (certificate and key): ssl would skip the key, but the field is not a secret, so the
        # key would be stored unencrypted and answered unmasked.
        raise ValueError(PRIVATE_KEY_MISPLACED)
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValueError("must be PEM certificate(s) (-----BEGIN CERTIFICATE-----) or an env:/file: reference")
    return value


#: How pydantic answers a ``SecretStr``: an update sending it back keeps the stored value (the admin API merges).
_ANSWERED_MASK = "**********"


def _private_key_or_reference(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if raw == _ANSWERED_MASK:
        return value
    if not is_reference(raw) and ("-----BEGIN" not in raw or "PRIVATE KEY-----" not in raw):
        raise ValueError("must be a PEM private key (-----BEGIN … PRIVATE KEY-----) or an env:/file: reference")
    return value


#: PEM text given inline, or an ``env:``/``file:`` reference to it (resolved by the dispatcher, like secrets).
PemOrReference = Annotated[str, AfterValidator(_pem_or_reference)]


class TlsSettings(_Spec):
    """How the dispatcher speaks TLS to the partner (and to the profile's OAuth token endpoint).

    ``ca_bundle``: the CA certificate(s) to trust instead of the system's (a partner's private CA);
    ``client_certificate`` and ``client_key``: the certificate (chain) and private key presented for
    mutual TLS, both or neither (the key is a secret: answered masked, stored encrypted when literal);
    ``min_version``: the oldest TLS version accepted.
    """

    ca_bundle: PemOrReference | None = None
    client_certificate: PemOrReference | None = None
    client_key: Annotated[Secret, AfterValidator(_private_key_or_reference)] | None = None
    min_version: Literal["TLS1.2", "TLS1.3"] = "TLS1.2"

    @model_validator(mode="after")
    def _certificate_with_key(self) -> TlsSettings:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together (mutual TLS needs both)")
        return self


class ProxySettings(_Spec):
    """An HTTP(S) forward proxy the profile's requests go through (``CONNECT`` for ``https`` partners).

    ``url`` is the proxy itself (``http://proxy.internal:3128``; partners on ``https`` are reached through a
    ``CONNECT`` tunnel, TLS end to end with the partner), without credentials: ``username`` and
    ``password`` (a secret) are sent as Basic proxy authentication.
    The SSRF guard judges the partner's address before anything is sent through the proxy, and the proxy's
    own address (allowed by ``EXPORT_ALLOWED_DESTINATIONS`` or ``EXPORT_ALLOWED_PROXIES``).
    """

    url: Annotated[str, Field(pattern=r"^http://[^\s/?#]+/?$"), AfterValidator(_without_credentials)]
    username: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^:\s]+$")] | None = None
    password: Secret | None = None

    @field_validator("url")
    @classmethod
    def _host_and_port(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port, parts = None, None
        if parts is None or not parts.hostname or port is None:
            raise ValueError("must be http://host:port (the proxy's host and port)")
        return url

    @model_validator(mode="after")
    def _password_with_username(self) -> ProxySettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (Basic proxy authentication)")
        return self


#: The longest ``timeout_seconds`` a connection profile may set: one attempt of a partner request takes no longer
#: (the dispatcher's round end is the poll interval less this and a margin).
PROFILE_TIMEOUT_MAX_SECONDS = 300.0


class ConnectionProfile(_Spec):
    """Where and how to reach a partner API: a base URL and its authentication.

    Validation errors never echo their input (a profile holds credentials); URLs may not carry user
    information (``user:password@``) nor a credential in their query (``?api_key=``, refused at save: a profile
    saved before still loads, its value masked in reads): credentials belong in ``auth``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: Name
    label: str | None = Field(default=None, max_length=LABEL_MAX_LENGTH)
    base_url: Annotated[
        str,
        Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$"),
        AfterValidator(_without_credentials),
        AfterValidator(_without_query_credentials),
        PlainSerializer(shown_url, return_type=str, when_used="json"),
        WithJsonSchema({"type": "string", "pattern": r"^https?://[^\s/]+(/[^\s]*)?$"}),
    ]
    auth: Auth = NoAuth()
    timeout_seconds: Annotated[float, Field(gt=0, le=PROFILE_TIMEOUT_MAX_SECONDS)] = 30.0
    #: Standard Webhooks signing secret (``whsec_…``, or an ``env:``/``file:`` reference to one): when set,
    #: every request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``.
    signing_secret: Secret | None = None
    rate_limit: RateLimit | None = None
    #: Pause deliveries while the partner fails (:mod:`shared.domain.circuit_breaker`); None: no breaker.
    circuit_breaker: CircuitBreakerSettings | None = None
    #: A custom CA, a client certificate for mutual TLS, a minimum TLS version (:class:`TlsSettings`).
    tls: TlsSettings | None = None
    #: The forward proxy requests go through (:class:`ProxySettings`).
    proxy: ProxySettings | None = None

    @model_validator(mode="after")
    def _query_key_once(self) -> ConnectionProfile:
        auth = self.auth
        if isinstance(auth, ApiKeyAuth) and auth.name is not None:
            names = {unquote_plus(field.partition("=")[0]) for field in urlsplit(self.base_url).query.split("&")}
            if auth.name in names:
                raise ValueError(f"base_url's query already has the parameter {auth.name!r}, which auth.name sets")
        return self


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
    metadata); ``query_string`` values are URL-encoded; the body must render JSON. ``json_body`` is the
    body written as a JSON structure instead, with Jinja in its leaf strings and ``$each`` for one
    element per member (``shared.domain.json_structure``): one or the other, not both. Without either,
    the batch is sent as a JSON array of members.

    ``headers`` may not set the framing headers (``Host``, ``Content-Length``, ``Transfer-Encoding``…),
    credentials (``Authorization``, ``Cookie``: they come from the profile) or the dispatcher's own
    (``Idempotency-Key``, ``webhook-*``), in any case (``shared.domain.http_fields``).

    ``content_type`` says what the body is (``shared.domain.bodies``): ``json`` (above); ``form``, an
    ``application/x-www-form-urlencoded`` body from ``form`` (field name → template), each field once per
    member of the request, in member order (one of each with a batch size of 1); ``xml``, the text ``body``
    with values XML-escaped, refused unless well-formed; ``text``, the text ``body`` as rendered.
    """

    name: Name
    label: str | None = Field(default=None, max_length=LABEL_MAX_LENGTH)
    query: Name
    profile: Name
    method: HttpMethod = HttpMethod.POST
    # The pattern says in the schema what _path_is_relative enforces (a leading "/", no control character).
    path: str = Field(default="/", json_schema_extra={"pattern": r"^/[^\u0000-\u0008\u000a-\u001f\u007f]*$"})
    query_string: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: JsonValue = None
    content_type: BodyType = BodyType.JSON
    form: dict[Annotated[str, Field(min_length=1, max_length=200)], str] = Field(default_factory=dict)
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    success_statuses: list[Annotated[int, Field(ge=100, le=599)]] | None = None

    @field_validator("path")
    @classmethod
    def _path_is_relative(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/': it is appended to the connection profile's base URL")
        problem = source_problem(path)
        if problem is not None:
            raise ValueError(f"{problem}: a path is one line of text")
        return path

    @field_validator("headers")
    @classmethod
    def _headers_a_template_may_set(cls, headers: dict[str, str]) -> dict[str, str]:
        """Not the framing headers, nor credentials, nor the dispatcher's own (case-insensitively); once each."""
        seen: set[str] = set()
        for name, value in headers.items():
            problem = header_name_problem(name)
            if problem is None and name.lower() in seen:
                problem = f"header '{name}' is given twice (header names are case-insensitive)"
            if problem is None and (value_problem := source_problem(value)) is not None:
                problem = f"header '{name}' {value_problem}: a header value is one line of text"
            if problem is not None:
                raise ValueError(problem)
            seen.add(name.lower())
        return headers

    @field_validator("json_body", mode="wrap")
    @classmethod
    def _json_body_not_too_deep(cls, json_body: Any, handler: ValidatorFunctionWrapHandler) -> JsonValue:
        """Objects and lists nested past pydantic's depth (a few hundred levels) refused in a short message naming
        ``json_body``: pydantic's own named every level of the way (``json_body.list.0.list.0…``, kilobytes)."""
        try:
            return cast(JsonValue, handler(json_body))
        except ValidationError as exc:
            if not any(error["type"] == "recursion_depth_exceeded" for error in exc.errors(include_url=False)):
                raise
        from shared.domain.json_structure import MAX_DEPTH  # as below: Jinja only with a template

        raise ValueError(f"objects and lists are nested more than {MAX_DEPTH} deep") from None

    @field_validator("json_body")
    @classmethod
    def _json_body_compiles(cls, json_body: JsonValue) -> JsonValue:
        """Each leaf parses, each ``$each`` is well formed (the message names the place in the structure, its middle
        left out past :data:`STRUCTURE_PROBLEM_LENGTH` characters: a path of long keys, 64 levels deep)."""
        if json_body is not None:
            # Imported here, with the first template read: it loads Jinja, which reading a definition or a
            # query (``exportctl run``) does not need.
            from shared.domain.json_structure import StructureError, compiled

            try:
                compiled(json_body)  # StructureError (a ValueError) says where and why
            except StructureError as exc:
                raise ValueError(_elided(str(exc), STRUCTURE_PROBLEM_LENGTH)) from None
        return json_body

    @model_validator(mode="after")
    def _one_body(self) -> HttpTemplate:
        if self.body is not None and self.json_body is not None:
            raise ValueError("give the body either as text (body) or as a structure (json_body), not both")
        problem = body_type_problem(self.content_type, self.body, self.json_body, self.form)
        if problem is not None:
            raise ValueError(problem)
        return self


# --- Saved queries ---------------------------------------------------------------------------------


class SavedQuery(_Spec):
    """A named, read-only query over the member store (the reference platform's "Bigdata Query").

    ``key_column`` is unique and sortable (the member id): the extractor pages by it. ``parameters``
    declares the query's ``:name`` bind parameters and their types. ``columns`` is what the query
    returns, discovered from the query store when the query is saved (``exportctl apply``), so that
    templates can be checked against it. ``timeout_seconds`` can only shorten the operator's page
    timeout (``EXPORT_EXTRACTOR_QUERY_TIMEOUT_SECONDS``): a query runs with the smaller of the two.

    ``sql`` is read by a SQL parser (:func:`shared.domain.query_sql.check_select`): one read-only
    ``SELECT`` (``WITH … SELECT``, ``UNION`` …), no comments, no positional placeholders, only ``:name``
    parameters, each declared under ``parameters``.
    """

    name: Name
    label: str | None = Field(default=None, max_length=LABEL_MAX_LENGTH)
    description: str | None = Field(default=None, max_length=2_000)
    sql: str = Field(json_schema_extra={"minLength": 1})  # the parser refuses an empty query; the schema says so
    key_column: ColumnName = "id"
    parameters: dict[str, QueryParameter] = Field(default_factory=dict)
    columns: list[str] = Field(default_factory=list)
    timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None

    @field_validator("sql")
    @classmethod
    def _single_select(cls, sql: str) -> str:
        return check_select(sql).sql  # UnsafeSql is a ValueError: refused naming the field and the reason

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

    def effective_timeout(self, limit_seconds: float) -> float:
        """The page timeout this query runs with: its ``timeout_seconds``, never above the operator's limit."""
        return limit_seconds if self.timeout_seconds is None else min(self.timeout_seconds, limit_seconds)

    def timeout_problem(self, limit_seconds: float) -> str | None:
        """Why ``timeout_seconds`` is refused under the operator's ``limit_seconds`` (None when it is not).

        For the save-time checks, which name the field (``timeout_seconds``) before the reason; a larger
        value stored earlier is not refused but has no effect (:meth:`effective_timeout`).
        """
        if self.timeout_seconds is None or self.timeout_seconds <= limit_seconds:
            return None
        return (
            f"{self.timeout_seconds:g} s is above the operator's query timeout of {limit_seconds:g} s "
            f"(EXPORT_EXTRACTOR_QUERY_TIMEOUT_SECONDS): set at most {limit_seconds:g}, or leave it out"
        )


class Incremental(_Spec):
    """Incremental mode: export only members whose ``watermark_column`` moved since the last successful run."""

    watermark_column: ColumnName


# --- Export definitions ----------------------------------------------------------------------------


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def _one_address(value: str, info: ValidationInfo) -> str:
    """A recipient saved is one address (:func:`is_one_address`). The catalog's own rows (read with its context)
    are read as saved: one saved by an older release is refused by the notifier when it mails it (given up, said why),
    not made the whole definition unreadable."""
    if not read_as_saved(info) and not is_one_address(value):
        raise ValueError(
            "is not one email address as mail parsers read it (e.g. a <, :, comma, ( or quote in it): name@domain.tld"
        )
    return value


Email = Annotated[str, Field(pattern=EMAIL_PATTERN), AfterValidator(_one_address)]


class Notification(_Spec):
    """One toggle of step 4 and who is told: at least one recipient when it is on."""

    # The schema says what _enabled_needs_recipients enforces: off, or at least one recipient.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"enabled": {"const": False}}},
                {"required": ["recipients"], "properties": {"recipients": {"minItems": 1}}},
            ]
        }
    )

    enabled: StrictBool = False
    recipients: list[Email] = Field(default_factory=list)

    @model_validator(mode="after")
    def _enabled_needs_recipients(self) -> Notification:
        if self.enabled and not self.recipients:
            raise ValueError("needs at least one recipient when enabled")
        return self


class WebhookEvent(StrEnum):
    """The run lifecycle events a webhook channel may subscribe to (README, Notifications)."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    SKIPPED = "skipped"
    #: One missed run; after an outage, many at once are sent as one ``missed_digest`` event instead.
    MISSED = "missed"
    #: The run's failure paused the schedule (``failure_policy.pause_after_failed_runs``).
    PAUSED = "paused"
    #: The first successful run after one or more failed runs.
    RECOVERED = "recovered"


class WebhookFormat(StrEnum):
    """``standard``: a JSON event (Standard Webhooks signed); ``slack``: a Slack incoming-webhook message."""

    STANDARD = "standard"
    SLACK = "slack"


_REFERENCE_SCHEMA: dict[str, Any] = {
    "pattern": r"^(env|file):\S+$",
    "description": "env:NAME or file:PATH naming the whsec_ secret (never the secret itself)",
}


def _reference_only(value: str) -> str:
    # Never the value in the message: it may be the very secret that does not belong here.
    if not is_reference(value) or any(c.isspace() for c in value):
        raise ValueError(
            "give an env:NAME or file:PATH reference to the whsec_ secret, not the secret itself "
            "(the notifier resolves it; the catalog does not store webhook secrets)"
        )
    return value


def shown_webhook_url(url: str) -> str:
    """A webhook URL as every read shows it (JSON: the admin API, ``exportctl get``, the console, the audit log):
    ``scheme://host[:port]/**********``, its path, query and fragment masked, since an incoming webhook's URL
    (Slack's, Teams') holds its token there; a URL with none of them (``https://hooks.example.com``) as it is.
    Sent back unchanged, it keeps the stored URL (:func:`shared.application.masked_secrets.keep_masked_secrets`).
    An ``env:NAME``/``file:PATH`` reference to the URL is a name, not a secret: shown as it is, never resolved."""
    if is_reference(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _ANSWERED_MASK
    if parts.path in ("", "/") and not parts.query and not parts.fragment:
        return url
    return f"{parts.scheme}://{parts.netloc}/{_ANSWERED_MASK}"


#: A webhook URL as given, and as its ``env:``/``file:`` reference resolves (:func:`is_webhook_url`).
_URL_PATTERN = r"https?://[^\s/]+(/[^\s]*)?"
_WEBHOOK_URL_PATTERN = rf"^({_URL_PATTERN}|env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+)$"
#: A webhook channel's URL, or an ``env:NAME``/``file:PATH`` reference to it (the notifier resolves it at each send,
#: under the secret-reference allow-lists: the token then is never in the catalog): validated as given, answered
#: masked in JSON (:func:`shown_webhook_url`). One schema for requests and answers (the mask matches the pattern), so
#: that the API document keeps one ``WebhookChannel``.
WebhookUrl = Annotated[
    str,
    Field(pattern=_WEBHOOK_URL_PATTERN),
    AfterValidator(_without_credentials),
    PlainSerializer(shown_webhook_url, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _WEBHOOK_URL_PATTERN,
            "description": "http(s) URL, without user information; answered with its path and query masked "
            "(scheme://host/**********), which sent back unchanged keeps the stored URL. Or env:NAME or file:PATH "
            "naming it (resolved by the notifier at each send; shown as given)",
        }
    ),
]


def is_webhook_url(url: str) -> bool:
    """Whether ``url`` (a reference's resolved value) is what a channel's URL may be: http(s), no user information."""
    return re.fullmatch(_URL_PATTERN, url) is not None and not holds_credentials(url)


class WebhookChannel(_Spec):
    """An outgoing webhook for run lifecycle events, sent by the notifier (signed when ``signing_secret`` is set).

    The URL passes the SSRF guard when the definition is saved and again at every connection. Its path and query are
    a secret of the receiver's (an incoming webhook's token): answered masked (:func:`shown_webhook_url`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: WebhookUrl
    events: list[WebhookEvent] = Field(
        default_factory=lambda: [WebhookEvent.FAILED, WebhookEvent.COMPLETED_WITH_ERRORS, WebhookEvent.RECOVERED],
        min_length=1,
    )
    format: WebhookFormat = WebhookFormat.STANDARD
    #: An ``env:NAME``/``file:PATH`` reference to the Standard Webhooks signing secret (``whsec_…``), resolved by
    #: the notifier under the secret-reference allow-lists. A reference is a name, not a secret (shown as is):
    #: the secret itself is never in the catalog, which every service reads definitions from.
    signing_secret: (
        Annotated[str, AfterValidator(_reference_only), Field(json_schema_extra=_REFERENCE_SCHEMA)] | None
    ) = None
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0


class Notifications(_Spec):
    """Step 4, *Notifications*: who hears about errors and about successes, and the webhooks told of run events.

    The error recipients also get the recovery notice and the digest of runs missed during an outage.
    """

    error: Notification = Notification()
    success: Notification = Notification()
    webhooks: dict[Name, WebhookChannel] = Field(default_factory=dict)


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
    label: str | None = Field(default=None, max_length=LABEL_MAX_LENGTH)
    business_unit: str | None = Field(default=None, max_length=100)
    priority: Priority = Priority.NORMAL
    query: Name
    template: Name
    parameters: dict[str, Any] = Field(default_factory=dict)
    incremental: Incremental | None = None
    #: Full or change-based sync, and change mode's templates per kind (shared/domain/sync_mode.py).
    sync: Sync = Sync()
    schedule: Schedule = Schedule()
    notifications: Notifications = Notifications()
    failure_policy: FailurePolicy = FailurePolicy()
    #: Members the partner refused, sent again by the next runs (shared.domain.member_retries).
    retry_rejected: RetryRejected = RetryRejected()

    @field_validator("parameters")
    @classmethod
    def _parameters_not_too_deep(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        """A value nested past :data:`NESTING_MAX_DEPTH` refused naming its parameter: taken as it was (``Any``), it
        ended its save in a 500 (pydantic writes at most a few hundred levels). A value is one of the query's
        scalars when the run binds it; what else it may be is judged there, as before."""
        for name, value in parameters.items():
            if _nested_deeper_than(value, NESTING_MAX_DEPTH):
                raise ValueError(f"'{name}': objects and lists are nested more than {NESTING_MAX_DEPTH} deep")
        return parameters


CatalogObject = ConnectionProfile | HttpTemplate | SavedQuery | ExportDefinition

#: The kinds, in dependency order: an object refers only to kinds listed before its own (and a definition to the
#: definition it follows, ``schedule.after``).
KINDS: dict[str, type[CatalogObject]] = {
    "ConnectionProfile": ConnectionProfile,
    "SavedQuery": SavedQuery,
    "HttpTemplate": HttpTemplate,
    "ExportDefinition": ExportDefinition,
}


def references(obj: CatalogObject) -> list[tuple[type[CatalogObject], str, str]]:
    """The objects ``obj`` refers to, as (kind, name, field): what must exist for ``obj`` to be saved, and may not
    be deleted or renamed while ``obj`` names it (a followed definition too: its follower would never run)."""
    if isinstance(obj, HttpTemplate):
        return [(SavedQuery, obj.query, "query"), (ConnectionProfile, obj.profile, "profile")]
    if isinstance(obj, ExportDefinition):
        named = [(HttpTemplate, name, field) for name, field in obj.sync.named_templates()]
        after = obj.schedule.after
        followed = [] if after is None else [(ExportDefinition, after.definition, "schedule.after.definition")]
        return [(SavedQuery, obj.query, "query"), (HttpTemplate, obj.template, "template"), *named, *followed]
    return []


def names_object(obj: CatalogObject, kind: str, name: str) -> bool:
    """Whether ``obj`` refers to the object of ``kind`` (its class name) and ``name`` (which then may not be deleted
    or renamed)."""
    return any(k.__name__ == kind and n == name for k, n, _ in references(obj))


def missing_references(obj: CatalogObject, exists: Callable[[type[CatalogObject], str], bool]) -> list[str]:
    """One line for each object ``obj`` refers to that does not exist (as ``exists`` says): why a write of ``obj``
    is refused, whether the check before the write or the store's in its transaction finds it."""
    return [
        f"{kind_of(obj)} '{obj.name}': field '{field}': {kind.__name__} '{name}' does not exist"
        for kind, name, field in references(obj)
        if not exists(kind, name)
    ]


def kind_of(obj: CatalogObject) -> str:
    """The YAML ``kind`` of a catalog object."""
    return type(obj).__name__


def stored_form(obj: CatalogObject, encrypt: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The JSON the catalog stores: secrets included, as written (a literal or a reference).

    With ``encrypt``, each literal secret is stored as ``{"encrypted": encrypt(literal)}`` instead
    (references are names, not secrets, and stay readable); validating that JSON with the matching
    ``decrypt`` in the context (``{DECRYPT_SECRET: decrypt}``) gives the object back.
    """

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            return {ENCRYPTED: encrypt(secret)} if encrypt is not None and not is_reference(secret) else secret
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [reveal(v) for v in value]
        return value

    stored: dict[str, Any] = to_jsonable_python(reveal(obj.model_dump(mode="python")))
    return stored


def secret_fields(obj: CatalogObject) -> Iterator[tuple[str, SecretStr]]:
    """Every secret of ``obj`` with its field's dotted path (``auth.token``, ``signing_secret``)."""

    def walk(model: BaseModel, prefix: str) -> Iterator[tuple[str, SecretStr]]:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                yield prefix + name, value
            elif isinstance(value, BaseModel):
                yield from walk(value, f"{prefix}{name}.")

    return walk(obj, "")


def query_consistency_problems(definition: ExportDefinition, query: SavedQuery) -> list[str]:
    """What in ``definition`` does not fit its query: undeclared parameters, a value not of its parameter's type
    (what a run's binding says of it: ``expected integer: …``), a required parameter without default it does not
    give while it runs unattended (:func:`runs_unattended`), a watermark the query lacks.

    Each problem names the definition's field. Column checks need ``query.columns`` (discovered at save);
    without them only the parameters are checked.
    """
    watermark = definition.incremental.watermark_column if definition.incremental else None
    needed = unset_required(query.parameters) if runs_unattended(definition.schedule) else []
    return fit_problems(definition.parameters, watermark, query, needed)


#: Why a definition that runs unattended must give a required parameter's value itself.
UNATTENDED = "its scheduled and chained runs are requested with no parameters"


def runs_unattended(schedule: Schedule | Mapping[str, Any] | None) -> bool:
    """Whether a definition's runs are requested with no parameters (by its schedule, or after the definition it
    follows): its ``schedule`` enabled, as given or as stored (its JSON). Its other runs (``exportctl run``,
    ``POST …/runs``, a run request from another system) may give the values themselves."""
    if isinstance(schedule, Schedule):
        return schedule.enabled
    return isinstance(schedule, Mapping) and schedule.get("enabled") is True


def fit_problems(
    parameters: Mapping[str, Any],
    watermark_column: str | None,
    query: SavedQuery,
    needed: Iterable[str] = (),
    *,
    stored: bool = False,
) -> list[str]:
    """:func:`query_consistency_problems` of a definition's ``parameters`` and ``watermark_column`` (None: not
    incremental), as given or as stored (its JSON: what a query's save checks of the definitions on it, unread);
    ``needed``: the required parameters without default it must give (it runs unattended)."""
    problems = []
    for name, value in parameters.items():
        declared = query.parameters.get(name)
        if declared is None:
            problems.append(f"field 'parameters.{name}': query '{query.name}' declares no such parameter")
            continue
        try:
            coerce(declared.type, value, stored=stored)
        except ValueError as exc:
            problems.append(f"field 'parameters.{name}': {exc}")
    problems += [
        f"field 'parameters.{name}': {required_problem(name, query.parameters[name])}: {UNATTENDED}"
        for name in needed
        if parameters.get(name) is None
    ]
    if watermark_column and query.columns and watermark_column not in query.columns:
        problems.append(
            f"field 'incremental.watermark_column': query '{query.name}' returns no column "
            f"'{watermark_column}' (it returns: {', '.join(query.columns)})"
        )
    return problems


@dataclass(frozen=True)
class RunObjects:
    """An export definition with its saved query and HTTP template, as a run reads them (in one transaction).

    ``missing`` says why the query or the template could not be read (not found, or invalid as stored: the
    first of the two that failed), with ``query`` and ``template`` then None: the run fails with it, once it
    knows it runs at all (a cancelled or withdrawn run fails for nothing)."""

    definition: ExportDefinition
    query: SavedQuery | None = None
    template: HttpTemplate | None = None
    missing: str | None = None


def _elided(text: str, limit: int) -> str:
    """``text``, or its first and last parts with "…" between them when it is longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]}…{text[len(text) - (limit - head - 1) :]}"


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds objects or lists in one another more than ``limit`` deep (read without recursion,
    stopping there)."""
    pending = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return True
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False
