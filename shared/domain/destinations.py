"""Which network destinations exports may reach: the SSRF guard's rule. Pure.

By default only public (globally routable) addresses: loopback, private, link-local (cloud metadata
endpoints such as 169.254.169.254 live there), carrier-grade NAT, multicast, reserved and unspecified
addresses are refused, including IPv4 addresses mapped into IPv6. Operators allow exceptions explicitly
by host name or CIDR (``EXPORT_ALLOWED_DESTINATIONS``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DestinationPolicy:
    """Allowed exceptions to "public addresses only": host names and networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allowlist: str) -> DestinationPolicy:
        """From ``"127.0.0.1, 10.0.0.0/8, partner.internal"``: CIDRs and addresses become networks, the rest hosts."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in allowlist.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None when it is allowed."""
        if host.lower().rstrip(".") in self.hosts:
            return None
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        checked = mapped or address
        if any(checked in network for network in self.networks):
            return None
        if checked.is_global and not checked.is_multicast:  # Python counts some multicast as global
            return None
        return (
            f"destination {host} ({address}) is a {_kind(checked)} address; allow it explicitly in "
            "EXPORT_ALLOWED_DESTINATIONS if it is meant to be reached"
        )


def _kind(address: IPAddress) -> str:
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private:
        return "private"
    return "non-public"
