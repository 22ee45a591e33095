"""Which forward proxies a connection profile may name: the SSRF guard's rule for the proxy itself. Pure.

A proxy is allowed when the destination policy would let an export reach its address
(``EXPORT_ALLOWED_DESTINATIONS``: a public address, or an allowed host or network), or when the operator
lists it in ``EXPORT_ALLOWED_PROXIES`` (host names and CIDRs, like the destination allow-list). The second
list exists so that an internal proxy can be used without becoming a destination exports could reach
directly. The partner behind the proxy is judged by the destination policy alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.domain.destinations import DestinationPolicy

#: The operator's setting (read like pydantic-settings reads the others: the name in any case).
ALLOWED_PROXIES_VARIABLE = "EXPORT_ALLOWED_PROXIES"


def proxy_policy(destinations: DestinationPolicy, allowed_proxies: str = "") -> DestinationPolicy:
    """The policy a proxy's address must pass: ``destinations`` widened by the ``allowed_proxies`` list."""
    listed = DestinationPolicy.parse(allowed_proxies)
    return DestinationPolicy(destinations.hosts | listed.hosts, destinations.networks + listed.networks)


def allowed_proxies_setting(environ: Mapping[str, str] | None = None) -> str:
    """``EXPORT_ALLOWED_PROXIES`` of the process (empty when unset)."""
    environ = os.environ if environ is None else environ
    return next((value for name, value in environ.items() if name.upper() == ALLOWED_PROXIES_VARIABLE), "")
