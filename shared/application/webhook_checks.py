"""Save-time rules of a definition's webhook channels: the SSRF guard on their URLs (checked again at every
connection by the notifier) and the ``env:``/``file:`` allow-lists on their signing secrets and on their URLs given
as references."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy, is_reference


class ReachChecks(Protocol):
    """What of :class:`shared.application.checks.ObjectChecks` these rules use."""

    @property
    def policy(self) -> DestinationPolicy: ...
    @property
    def resolve_host(self) -> Callable[[str], list[str]]: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def secret_references(self) -> SecretReferencePolicy: ...


def webhook_problems(definition: ExportDefinition, checks: ReachChecks) -> list[str]:
    """One line per refused webhook URL, URL reference or signing-secret reference, naming the field (never a
    secret)."""
    at = f"ExportDefinition '{definition.name}': field 'notifications.webhooks"
    problems = [
        f"{at}.{name}.signing_secret': {refusal}"
        for name, channel in definition.notifications.webhooks.items()
        if channel.signing_secret is not None
        and (refusal := checks.secret_references.refusal(channel.signing_secret)) is not None
    ]
    for name, channel in definition.notifications.webhooks.items():
        if is_reference(channel.url):
            # Its URL is the notifier's to resolve (and to guard, at every connection): the reference is judged here.
            if (refusal := checks.secret_references.refusal(channel.url)) is not None:
                problems.append(f"{at}.{name}.url': {refusal}")
            continue
        host = urlsplit(channel.url).hostname or ""
        try:
            addresses = checks.resolve_host(host)
        except UnicodeError:
            problems.append(f"{at}.{name}.url': '{host}' is not a valid host name")
            continue
        except OSError:
            # Not resolvable from here (split DNS): the notifier checks every connection anyway.
            checks.warnings.append(f"{at}.{name}.url': host {host} does not resolve from here")
            continue
        for address in sorted(set(addresses)):
            refusal = checks.policy.refusal(host, ipaddress.ip_address(address.split("%")[0]))
            if refusal is not None:
                problems.append(f"{at}.{name}.url': {refusal}")
                break
    return problems
