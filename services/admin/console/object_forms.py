"""Connection profiles, HTTP API templates and saved queries as form fields, and back as the API's bodies. Pure.

Secrets are write-only: a profile's form never holds one; a blank secret field sends the API's mask, which the
use case reads as "keep the stored secret". Maps (headers, query string, parameters) and a ``json_body`` are
written as YAML (JSON is YAML too), as in a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import annotated_types
import yaml
from pydantic.fields import FieldInfo

from services.admin.console.forms import Form, Problems, parsed_yaml
from shared.application.masked_secrets import MASK
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, SavedQuery, TlsSettings, shown_url
from shared.domain.circuit_breaker import CircuitBreakerSettings

#: Each authentication type's fields, and which of them are secrets.
AUTH_FIELDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "basic": ("username", "password"),
    "bearer": ("token",),
    "api_key": ("in", "header", "name", "key"),  # in: header (the default) or query (then name: the parameter)
    "oauth2_client_credentials": ("token_url", "client_id", "client_secret", "scope"),
}
SECRETS = frozenset({"password", "token", "key", "client_secret"})
#: The profile's secrets outside its auth, by their form fields (write-only, as the auth's).
PROFILE_SECRETS = ("signing_secret", "tls_client_key", "proxy_password")
#: The oldest TLS version accepted unless a profile says otherwise (TlsSettings' default).
TLS_MIN_VERSION: str = TlsSettings.model_fields["min_version"].default
#: The TLS versions a profile may name as its oldest (the domain's Literal: the select offers exactly these).
TLS_VERSIONS: tuple[str, ...] = get_args(TlsSettings.model_fields["min_version"].annotation)


@dataclass(frozen=True)
class BreakerField:
    """One of the circuit breaker's settings as the profile form shows it: its default and bounds are the domain's."""

    name: str
    label: str
    default: str
    #: What the domain accepts (``above 0, up to 1``), said beside the field.
    bounds: str
    #: The number input's step: ``any`` for a float, ``1`` for a count.
    step: str

    @property
    def path(self) -> str:
        """Where a refusal names it (``circuit_breaker.failure_rate``)."""
        return f"circuit_breaker.{self.name}"

    @property
    def input(self) -> str:
        """The form field's name (and its input's id)."""
        return f"circuit_breaker_{self.name}"


#: Each circuit breaker setting's label (the keys are the domain's fields: a new one needs a label).
BREAKER_LABELS = {
    "failure_rate": "Failure rate that opens it (share of attempts)",
    "minimum_requests": "Attempts before the rate is judged",
    "window_seconds": "Window (seconds)",
    "open_seconds": "Open for (seconds) before probing",
    "half_open_probes": "Probes that close it",
}


def _number(value: float) -> str:
    """A number as a form shows it: the shortest text that reads back the same (``30``, ``0.25``)."""
    text = repr(value)
    return text.removesuffix(".0")


def _bounds(info: FieldInfo) -> str:
    """A field's numeric constraints in words (``above 0, up to 1``; ``1 to 100,000``)."""
    low = high = ""
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt):
            low = f"above {item.gt:,}"
        elif isinstance(item, annotated_types.Ge):
            low = f"{item.ge:,}"
        elif isinstance(item, annotated_types.Le):
            high = f"{item.le:,}"
    if low and high:
        return f"{low}, up to {high}" if low.startswith("above") else f"{low} to {high}"
    return low or (f"up to {high}" if high else "")


def _breaker_fields() -> tuple[BreakerField, ...]:
    defaults = CircuitBreakerSettings()
    return tuple(
        BreakerField(
            name=name,
            label=BREAKER_LABELS[name],
            default=_number(getattr(defaults, name)),
            bounds=_bounds(info),
            step="1" if info.annotation is int else "any",
        )
        for name, info in CircuitBreakerSettings.model_fields.items()
    )


#: The circuit breaker's settings, in the domain's order.
BREAKER_FIELDS = _breaker_fields()


def _yaml(value: Any) -> str:
    if value in (None, {}, []):
        return ""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()


def _parsed(form: Form, name: str, problems: Problems, *, mapping: bool = True) -> Any:
    text = form.fields.get(name, [""])[-1]
    if not text.strip():
        return {} if mapping else None
    read, value = parsed_yaml(text, problems, name)
    if not read:
        return {} if mapping else None
    if mapping and not isinstance(value, dict):
        problems.add(name, "must be a mapping (name: value, one a line)")
        return {}
    return value


def _named(form: Form, body: dict[str, Any]) -> dict[str, Any]:
    if form.optional("name"):
        body["name"] = form.text("name")
    return body


# --- connection profiles ------------------------------------------------------------------------------


def profile_values(profile: ConnectionProfile | None) -> dict[str, Any]:
    """A profile's fields, its secrets left out (the form says whether one is stored)."""
    if profile is None:
        return {
            "auth_type": "none",
            "timeout_seconds": "30",
            "burst": "1",
            "tls_min_version": TLS_MIN_VERSION,
            "stored_secrets": [],
        } | _breaker_values(None)
    auth = profile.auth.model_dump(mode="json")
    values: dict[str, Any] = {
        "label": profile.label or "",
        "name": profile.name,
        "base_url": shown_url(profile.base_url),  # a key a profile saved before held in its query: masked
        "auth_type": auth.get("type", "none"),
        "timeout_seconds": f"{profile.timeout_seconds:g}",
        "stored_secrets": [name for name in AUTH_FIELDS.get(auth.get("type", "none"), ()) if name in SECRETS]
        + (["signing_secret"] if profile.signing_secret else [])
        + (["tls_client_key"] if profile.tls and profile.tls.client_key else [])
        + (["proxy_password"] if profile.proxy and profile.proxy.password else []),
    }
    tls, proxy = profile.tls, profile.proxy
    values |= {
        # Certificates are public (a CA bundle, the client's chain): shown; the client key never is.
        "tls_ca_bundle": tls.ca_bundle or "" if tls else "",
        "tls_client_certificate": tls.client_certificate or "" if tls else "",
        "tls_min_version": tls.min_version if tls else TLS_MIN_VERSION,
        "proxy_url": proxy.url if proxy else "",
        "proxy_username": proxy.username or "" if proxy else "",
    }
    shown = {name: str(value) for name, value in auth.items() if name not in SECRETS and value is not None}
    # As auth_<field> (what the form reads first): an API key's query parameter ``name`` is not the profile's.
    values |= {f"auth_{name}": value for name, value in shown.items()}
    values |= {name: value for name, value in shown.items() if name not in values}
    limit = profile.rate_limit
    values |= {
        "requests_per_second": f"{limit.requests_per_second:g}" if limit and limit.requests_per_second else "",
        "burst": str(limit.burst) if limit else "1",
        "max_in_flight": str(limit.max_in_flight) if limit and limit.max_in_flight else "",
    }
    return values | _breaker_values(profile.circuit_breaker)


def _breaker_values(breaker: CircuitBreakerSettings | None) -> dict[str, str]:
    """The breaker's fields: on with its settings, or off with the domain's defaults (what "on" would take)."""
    shown = breaker or CircuitBreakerSettings()
    return {"circuit_breaker": "on" if breaker else "off"} | {
        field.input: _number(getattr(shown, field.name)) for field in BREAKER_FIELDS
    }


def auth_paths(kind: str, name: str, chosen: str) -> list[str]:
    """Where a refusal names auth type ``kind``'s field ``name``, for the form to show it beside that field.

    Pydantic names it with its type, the auth union's tag (``auth.bearer.token``: a field missing or malformed);
    a use case names it as the saved object holds it (``auth.token``: a mask with no secret stored to keep, a
    reference not allowed), which is the type ``chosen`` in the form: that type's field only.
    """
    return [f"auth.{kind}.{name}", *([f"auth.{name}"] if kind == chosen else [])]


def profile_body(form: Form, current: ConnectionProfile | None) -> dict[str, Any]:
    """The profile as the API takes it; a blank secret keeps the stored one (the mask), else is left out."""
    kind = form.text("auth_type", "none")
    same_type = current is not None and current.auth.type == kind
    auth: dict[str, Any] = {"type": kind}
    for name in AUTH_FIELDS.get(kind, ()):
        value = form.optional(f"auth_{name}")
        if value is None and name in SECRETS and same_type:
            value = MASK
        if value is not None:
            auth[name] = value
    body: dict[str, Any] = {
        "label": form.optional("label"),
        "base_url": form.text("base_url"),
        "auth": auth,
        "timeout_seconds": form.optional("timeout_seconds") or 30,
    }
    signing = form.optional("signing_secret")
    if (
        signing is None
        and current is not None
        and current.signing_secret is not None
        and not form.flag("clear_signing")
    ):
        signing = MASK
    body["signing_secret"] = signing
    if "tls_min_version" in form.fields:
        body["tls"] = _tls(form, current)
    if "proxy_url" in form.fields:
        body["proxy"] = _proxy(form, current)
    if _sends(form, _BREAKER_NAMES):
        body["circuit_breaker"] = _circuit_breaker(form)
    if current is not None:
        # A form without the TLS, proxy or breaker fields (an older page, a script) keeps those as they are, their
        # secrets masked as the API answers them (a mask sent back keeps the stored value).
        for name in ("tls", "proxy", "circuit_breaker"):
            kept = getattr(current, name)
            if kept is not None and name not in body:
                body[name] = kept.model_dump(mode="json", exclude_none=True)
    if form.optional("requests_per_second") or form.optional("max_in_flight"):
        body["rate_limit"] = {
            "requests_per_second": form.optional("requests_per_second"),
            "burst": form.optional("burst") or 1,
            "max_in_flight": form.optional("max_in_flight"),
        }
    elif current is not None and current.rate_limit is not None and not _sends(form, _RATE_LIMIT_NAMES):
        # The fields shown blank remove the limit; a post without them at all (a script, an older page) keeps it.
        body["rate_limit"] = current.rate_limit.model_dump(mode="json", exclude_none=True)
    return _named(form, body)


_RATE_LIMIT_NAMES = ("requests_per_second", "burst", "max_in_flight")
_BREAKER_NAMES = ("circuit_breaker", *(field.input for field in BREAKER_FIELDS))


def _sends(form: Form, names: tuple[str, ...]) -> bool:
    """Whether the form has any of these fields (blank or not)."""
    return any(name in form.fields for name in names)


def _circuit_breaker(form: Form) -> dict[str, Any] | None:
    """The breaker's settings, each blank one left to the domain's default; None (no breaker) when it is off.

    Without the on/off choice (a script), a setting given means a breaker.
    """
    typed = {field.name: form.optional(field.input) for field in BREAKER_FIELDS}
    choice = form.optional("circuit_breaker")
    if not (form.flag("circuit_breaker") if choice is not None else any(typed.values())):
        return None
    return {name: value for name, value in typed.items() if value is not None}


def _pem(form: Form, name: str) -> str | None:
    """A PEM text area's value (a browser sends CRLF line ends: PEM is written with LF), None when blank."""
    value = form.optional(name)
    return value.replace("\r\n", "\n") if value is not None else None


def _tls(form: Form, current: ConnectionProfile | None) -> dict[str, Any] | None:
    """The TLS settings; None (no settings) when every field is blank or the default.

    The client key is write-only: blank keeps the stored one (the mask) while a client certificate is given;
    blanking the certificate ends mutual TLS, the key with it (the two go together).
    """
    tls: dict[str, Any] = {
        "ca_bundle": _pem(form, "tls_ca_bundle"),
        "client_certificate": _pem(form, "tls_client_certificate"),
        "client_key": _pem(form, "tls_client_key"),
        "min_version": form.text("tls_min_version") or TLS_MIN_VERSION,
    }
    stored_key = current is not None and current.tls is not None and current.tls.client_key is not None
    if tls["client_key"] is None and stored_key and tls["client_certificate"] is not None:
        tls["client_key"] = MASK
    if not any(tls[name] for name in ("ca_bundle", "client_certificate", "client_key")) and (
        tls["min_version"] == TLS_MIN_VERSION
    ):
        return None
    return {name: value for name, value in tls.items() if value is not None}


def _proxy(form: Form, current: ConnectionProfile | None) -> dict[str, Any] | None:
    """The forward proxy; None (no proxy) when its URL is blank and no password is typed. The password is
    write-only: blank keeps the stored one (the mask) while a username is given; blanking the username ends proxy
    authentication."""
    url = form.optional("proxy_url")
    if url is None:
        password = form.optional("proxy_password")
        if password is None:
            return None
        # A password typed without a URL is meant for a proxy: sent as it is, so the domain refuses it beside
        # `proxy.url` instead of the console throwing the credentials away and answering "Saved".
        return {"username": form.optional("proxy_username"), "password": password}
    proxy: dict[str, Any] = {
        "url": url,
        "username": form.optional("proxy_username"),
        "password": form.optional("proxy_password"),
    }
    stored = current is not None and current.proxy is not None and current.proxy.password is not None
    if proxy["password"] is None and stored and proxy["username"] is not None:
        proxy["password"] = MASK
    return {name: value for name, value in proxy.items() if value is not None}


# --- HTTP API templates ---------------------------------------------------------------------------------


def template_values(template: HttpTemplate | None) -> dict[str, Any]:
    if template is None:
        return {"method": "POST", "path": "/", "batch_size": "500", "body_kind": "none"}
    body_kind = "json_body" if template.json_body is not None else ("body" if template.body is not None else "none")
    return {
        "label": template.label or "",
        "name": template.name,
        "query": template.query,
        "profile": template.profile,
        "method": template.method.value,
        "path": template.path,
        "query_string": _yaml(template.query_string),
        "headers": _yaml(template.headers),
        "body_kind": body_kind,
        "body": template.body or "",
        "json_body": _yaml(template.json_body) if template.json_body is not None else "",
        "batch_size": str(template.batch_size),
        "success_statuses": ", ".join(str(s) for s in template.success_statuses or []),
    }


def template_body(form: Form, problems: Problems, current: HttpTemplate | None = None) -> dict[str, Any]:
    kind = form.text("body_kind", "none")
    statuses = form.lines("success_statuses")
    body: dict[str, Any] = {
        "label": form.optional("label"),
        "query": form.text("query"),
        "profile": form.text("profile"),
        "method": form.text("method", "POST"),
        "path": form.text("path") or "/",
        "query_string": _parsed(form, "query_string", problems),
        "headers": _parsed(form, "headers", problems),
        "body": form.fields.get("body", [""])[-1] if kind == "body" else None,
        "json_body": _parsed(form, "json_body", problems, mapping=False) if kind == "json_body" else None,
        "batch_size": form.optional("batch_size") or 500,
        "success_statuses": statuses or None,
    }
    if current is not None and current.content_type != "json":
        # A form, XML or text body (set in YAML or through the API; the form edits JSON bodies only): kept.
        body |= {"content_type": current.content_type.value, "form": current.form or {}}
        if kind == "none":
            body["body"] = current.body
    return _named(form, body)


# --- saved queries ---------------------------------------------------------------------------------------


def query_values(query: SavedQuery | None) -> dict[str, Any]:
    if query is None:
        return {"key_column": "id", "columns": []}
    parameters = {name: p.model_dump(mode="json", exclude_defaults=True) for name, p in query.parameters.items()}
    return {
        "label": query.label or "",
        "name": query.name,
        "description": query.description or "",
        "sql": query.sql,
        "key_column": query.key_column,
        "parameters": _yaml(parameters),
        "timeout_seconds": f"{query.timeout_seconds:g}" if query.timeout_seconds else "",
        "columns": query.columns,
    }


def query_body(form: Form, problems: Problems) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": form.optional("label"),
        "description": form.optional("description"),
        "sql": form.fields.get("sql", [""])[-1].strip(),
        "key_column": form.text("key_column") or "id",
        "parameters": _parsed(form, "parameters", problems),
        "timeout_seconds": form.optional("timeout_seconds"),
    }
    return _named(form, body)
