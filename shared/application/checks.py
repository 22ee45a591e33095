"""The rules a set of catalog objects must meet before any of it is written, in one place.

References resolve; connection profiles point at allowed destinations (the SSRF guard at save) and hold
only allowed secret references (the ``env:``/``file:`` allow-lists); saved queries run against the member
store, which tells their columns; templates use only columns their query returns and render valid
requests for its first members; definitions fit their query; no text holds a NUL character. Every problem
is one line naming the object and its field, the same whichever entry point asked.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from shared.application.chain_checks import chain_problems
from shared.application.errors import Invalid
from shared.application.masked_secrets import UNKEPT_MASK, UNKEPT_URL_MASK, masked_webhook_urls, unkept_masks
from shared.application.ports import DefinitionsStore, MemberSource
from shared.application.query_checks import columns_problems, refuse_breaking_queries
from shared.application.sync_checks import kind_templates, sync_definition_problems
from shared.application.webhook_checks import webhook_problems
from shared.domain.catalog_objects import (
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    OAuth2ClientCredentials,
    SavedQuery,
    kind_of,
    missing_references,
    query_consistency_problems,
    secret_fields,
    stored_form,
)
from shared.domain.destinations import DestinationPolicy
from shared.domain.nul_characters import NOT_ALLOWED, nul_places
from shared.domain.pem import certificates_problem
from shared.domain.proxy_policy import allowed_proxies_setting, proxy_policy
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.rendering import TemplateRenderError, render_request
from shared.domain.secret_references import SecretReferencePolicy, is_reference
from shared.errors import PermanentError
from shared.events import MemberBatch

T = TypeVar("T", bound=CatalogObject)
#: Host name → the addresses it resolves to; raises OSError when it does not resolve.
ResolveHost = Callable[[str], list[str]]


@dataclass
class ObjectChecks:
    """What checking objects needs: the destination policy, name resolution and the member store.

    ``members`` is None where no member store is reachable: queries keep the columns they have and
    templates are not rendered (exportctl ``--skip-discovery``).
    """

    policy: DestinationPolicy
    resolve_host: ResolveHost
    members: MemberSource | None = None
    #: Notes that do not refuse anything (a host that does not resolve from here).
    warnings: list[str] = field(default_factory=list)
    #: The operator's query timeout (EXPORT_EXTRACTOR_QUERY_TIMEOUT_SECONDS): a saved query may not ask for more.
    query_timeout_limit_seconds: float | None = None
    #: Which env:/file: secret references profiles may hold (``settings.secret_references``).
    secret_references: SecretReferencePolicy = field(default_factory=SecretReferencePolicy.from_environment)
    #: Proxies allowed besides the destinations (``EXPORT_ALLOWED_PROXIES``: hosts and CIDRs).
    allowed_proxies: str = field(default_factory=allowed_proxies_setting)


class Lookup(Protocol):
    """Finds an object of a kind by name."""

    def __call__(self, kind: type[T], name: str) -> T | None: ...


def lookup_in(objects: list[CatalogObject], store: DefinitionsStore) -> Lookup:
    """Look an object up among ``objects`` (being written), else in the store."""
    declared = {(kind_of(o), o.name): o for o in objects}

    def lookup(kind: type[T], name: str) -> T | None:
        found = declared.get((kind.__name__, name))
        return found if isinstance(found, kind) else store.find(kind, name)

    return lookup


def where(obj: CatalogObject, field_name: str) -> str:
    """How a problem names an object's field."""
    return f"{kind_of(obj)} '{obj.name}': field '{field_name}'"


def checked(objects: list[CatalogObject], store: DefinitionsStore, checks: ObjectChecks) -> list[CatalogObject]:
    """``objects`` with their saved queries' columns discovered; :class:`Invalid` listing every problem. A NUL
    character anywhere is refused first (:func:`refuse_nul`), before any host is resolved or query run. A saved
    query that the definitions stored on it would no longer fit is refused last (:class:`Conflict`,
    :func:`~shared.application.query_checks.refuse_breaking_queries`)."""
    refuse_nul(objects)
    lookup = lookup_in(objects, store)
    missing = [
        line for obj in objects for line in missing_references(obj, lambda kind, name: lookup(kind, name) is not None)
    ]
    if missing:
        raise Invalid(missing, slug="invalid-reference")
    profiles = [obj for obj in objects if isinstance(obj, ConnectionProfile)]
    problems = [
        p
        for obj in profiles
        for p in mask_problems(obj)
        + destination_problems(obj, checks)
        + secret_problems(obj, checks)
        + tls_problems(obj, checks)
    ]
    # Definitions: their webhook channels (no URL left masked, SSRF guard, secret allow-lists), their chains (no cycle).
    definitions = [obj for obj in objects if isinstance(obj, ExportDefinition)]
    problems += [f"{where(obj, path)}: {UNKEPT_URL_MASK}" for obj in definitions for path in masked_webhook_urls(obj)]
    problems += [p for obj in definitions for p in webhook_problems(obj, checks)]
    problems += chain_problems(objects, store)
    if checks.query_timeout_limit_seconds is not None:
        problems += [
            f"{where(obj, 'timeout_seconds')}: {problem}"
            for obj in objects
            if isinstance(obj, SavedQuery)
            and (problem := obj.timeout_problem(checks.query_timeout_limit_seconds)) is not None
        ]
    if checks.members is not None:
        objects, query_problems = discover_columns(objects, checks.members)
        problems += query_problems
        lookup = lookup_in(objects, store)
    for obj in objects:
        if isinstance(obj, HttpTemplate):
            problems += template_problems(obj, lookup, checks)
        elif isinstance(obj, ExportDefinition):
            problems += definition_problems(obj, lookup)
    if problems:
        raise Invalid(problems, slug="invalid-object")
    refuse_breaking_queries(objects, store)  # the definitions stored on a query saved: Conflict (in-use)
    return objects


def refuse_nul(objects: list[CatalogObject]) -> None:
    """:class:`Invalid` naming each field of ``objects`` (a text, a mapping's key, a secret: never quoted) that holds a
    NUL character (:mod:`shared.domain.nul_characters`): every write of an object (the API's, the console's,
    ``exportctl apply``, a copy) is checked by it before anything is stored."""
    problems = [f"{where(obj, place)}: {NOT_ALLOWED}" for obj in objects for place in nul_places(stored_form(obj))]
    if problems:
        raise Invalid(problems, slug="invalid-object")


def destination_problems(profile: ConnectionProfile, checks: ObjectChecks) -> list[str]:
    """The profile's base URL (and OAuth token URL) resolve only to allowed addresses (the SSRF guard at save);
    its proxy only to addresses allowed to a destination or listed in ``EXPORT_ALLOWED_PROXIES``."""
    urls = [("base_url", profile.base_url, checks.policy)]
    if isinstance(profile.auth, OAuth2ClientCredentials):
        urls.append(("auth.token_url", profile.auth.token_url, checks.policy))
    if profile.proxy is not None:
        urls.append(("proxy.url", profile.proxy.url, proxy_policy(checks.policy, checks.allowed_proxies)))
    problems = []
    for field_name, url, policy in urls:
        host = urlsplit(url).hostname or ""
        try:
            addresses = checks.resolve_host(host)
        except UnicodeError:
            problems.append(f"{where(profile, field_name)}: '{host}' is not a valid host name")
            continue
        except OSError:
            # Not resolvable from here (split DNS): checked again at every connection by the dispatcher.
            checks.warnings.append(f"{where(profile, field_name)}: host {host} does not resolve from here")
            continue
        for address in sorted(set(addresses)):
            refusal = policy.refusal(host, ipaddress.ip_address(address.split("%")[0]))
            if refusal is not None:
                hint = " (or in EXPORT_ALLOWED_PROXIES, for a proxy only)" if field_name == "proxy.url" else ""
                problems.append(f"{where(profile, field_name)}: {refusal}{hint}")
                break
    return problems


def mask_problems(profile: ConnectionProfile) -> list[str]:
    """The profile's secrets still masked after the mask was merged with what is stored: none was stored to keep."""
    return [f"{where(profile, path)}: {UNKEPT_MASK}" for path in unkept_masks(profile)]


def secret_problems(profile: ConnectionProfile, checks: ObjectChecks) -> list[str]:
    """The profile's ``env:``/``file:`` references name only what the dispatcher may resolve (never a value shown)."""
    return [
        f"{where(profile, path)}: {refusal}"
        for path, secret in secret_fields(profile)
        if (refusal := checks.secret_references.refusal(secret.get_secret_value())) is not None
    ]


def tls_problems(profile: ConnectionProfile, checks: ObjectChecks) -> list[str]:
    """The profile's CA bundle and client certificate: allowed references, or PEM certificates that can be read.

    (The client key is a secret: its reference is checked with the others; whether it matches the certificate
    is known when the dispatcher loads it, which dead-letters the batch saying so.)
    """
    if profile.tls is None:
        return []
    problems = []
    for field_name in ("ca_bundle", "client_certificate"):
        value = getattr(profile.tls, field_name)
        if value is None:
            continue
        problem = checks.secret_references.refusal(value) if is_reference(value) else certificates_problem(value)
        if problem is not None:
            problems.append(f"{where(profile, 'tls.' + field_name)}: {problem}")
    return problems


def discover_columns(objects: list[CatalogObject], members: MemberSource) -> tuple[list[CatalogObject], list[str]]:
    """Saved queries with ``columns`` read from the member store, and the queries that fail or lack their key."""
    discovered: list[CatalogObject] = []
    problems = []
    for obj in objects:
        if isinstance(obj, SavedQuery):
            try:
                columns = members.columns(obj)
            except PermanentError as exc:
                problems.append(f"{where(obj, 'sql')}: {exc}")
                continue
            if obj.key_column not in columns:
                problems.append(
                    f"{where(obj, 'key_column')}: the query returns no column '{obj.key_column}' "
                    f"(it returns: {', '.join(columns)})"
                )
                continue
            obj = obj.model_copy(update={"columns": columns})
        discovered.append(obj)
    return discovered, problems


def template_problems(template: HttpTemplate, lookup: Lookup, checks: ObjectChecks) -> list[str]:
    """The template uses only its query's columns, and renders a valid request for the query's first members."""
    query, profile = lookup(SavedQuery, template.query), lookup(ConnectionProfile, template.profile)
    assert query is not None, "references are checked first"
    assert profile is not None, "references are checked first"
    problems = columns_problems(template, query, where(template, "query"))
    if problems or checks.members is None:
        return problems
    try:
        values = bind_values(query.parameters)
        page = next(checks.members.pages(query, page_size=min(template.batch_size, 3), parameters=values), None)
    except (ParameterError, PermanentError):
        return []  # a required parameter without default, or a failing query (reported with the query)
    if page is None or not page.members:
        return []  # no member to render with
    sample = MemberBatch(
        run_id=uuid.UUID(int=0), definition="(check)", template=template.name, batch_index=0, members=page.members
    )
    try:
        render_request(template, profile, sample)
    except TemplateRenderError as exc:
        body_field = "form" if template.form else "body"
        return [f"{where(template, body_field)}: {exc} (rendered with the query's first members)"]
    return []


def definition_problems(definition: ExportDefinition, lookup: Lookup) -> list[str]:
    """A definition fits its query (parameters, watermark column) and its template's columns."""
    query, template = lookup(SavedQuery, definition.query), lookup(HttpTemplate, definition.template)
    assert query is not None, "references are checked first"
    assert template is not None, "references are checked first"
    problems = [
        f"{kind_of(definition)} '{definition.name}': {p}" for p in query_consistency_problems(definition, query)
    ]
    problems += sync_definition_problems(definition)
    problems += [
        p
        for kind_template, at in kind_templates(definition, lookup)
        for p in columns_problems(kind_template, query, at)
    ]
    return problems + columns_problems(template, query, where(definition, "template"))
