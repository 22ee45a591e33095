"""Which network destinations exports may reach: the SSRF guard's rule. Pure.

By default only public (globally routable) addresses: loopback, private, link-local (cloud metadata
endpoints such as 169.254.169.254 live there), carrier-grade NAT, multicast, reserved and unspecified
addresses are refused. An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-translated,
IPv4-compatible, 6to4, NAT64 and Teredo forms) is judged by the IPv4 address it reaches, so that
``::ffff:127.0.0.1``, ``::127.0.0.1``, ``64:ff9b::7f00:1`` or ``2002:7f00:1::`` are refused as the
loopback they are. Operators allow exceptions explicitly by host name or CIDR
(``EXPORT_ALLOWED_DESTINATIONS``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380


def _bits(value: int, start: int, length: int) -> int:
    """``length`` bits of a 128-bit ``value`` from bit ``start`` (0 is the most significant)."""
    return (value >> (128 - start - length)) & ((1 << length) - 1)


def _rfc6052_candidates(value: int) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 address of a NAT64 address under each prefix length of 64:ff9b:1::/48 (RFC 6052 layouts).

    The local-use prefix may be any of /48, /56, /64 or /96 inside it, which the address does not say:
    every reading is judged. Bits 64-71 (the "u" octet) are skipped by the layouts that straddle them.
    """
    layouts = [
        _bits(value, 96, 32),  # /96, the usual one, first: the refusal names the first reading refused
        _bits(value, 72, 32),  # /64
        (_bits(value, 56, 8) << 24) | _bits(value, 72, 24),  # /56
        (_bits(value, 48, 16) << 16) | _bits(value, 72, 16),  # /48
    ]
    return tuple(ipaddress.IPv4Address(v) for v in dict.fromkeys(layouts))


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 address(es) an IPv6 address carries and would reach; empty when it carries none.

    IPv4-mapped (``::ffff:a.b.c.d``), IPv4-translated (``::ffff:0:a.b.c.d``), IPv4-compatible
    (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``, and every RFC 6052 reading of the local-use prefix
    ``64:ff9b:1::/48``), 6to4 (``2002:aabb:ccdd::/48``) and Teredo (``2001:0::/32``: its server and
    its client, whose address is stored inverted).
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    value = int(address)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _IPV4_MAPPED or address in _IPV4_TRANSLATED:
        return (low32,)
    if address in _IPV4_COMPATIBLE and value > 1:  # :: and ::1 are IPv6's own unspecified and loopback
        return (low32,)
    if address in _NAT64_WELL_KNOWN:
        return (low32,)
    if address in _NAT64_LOCAL_USE:
        return _rfc6052_candidates(value)
    if address in _SIX_TO_FOUR:
        return (ipaddress.IPv4Address(_bits(value, 16, 32)),)
    if address in _TEREDO:
        server = ipaddress.IPv4Address(_bits(value, 32, 32))
        client = ipaddress.IPv4Address(~value & 0xFFFFFFFF)
        return (server, client)
    return ()


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
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None when it is allowed.

        An address in an allowed network, or of an allowed host, is allowed. Otherwise an address that
        carries IPv4 addresses (:func:`embedded_ipv4`) is judged by them, each of which must be allowed
        or public; any other address must be public itself.
        """
        if host.lower().rstrip(".") in self.hosts or self._listed(address):
            return None
        embedded = embedded_ipv4(address)
        for judged in embedded or (address,):
            if self._listed(judged) or (judged.is_global and not judged.is_multicast):
                continue  # Python counts some multicast as global
            carried = f", which carries IPv4 {judged}" if embedded else ""
            kind = _kind(judged)
            return (
                f"destination {host} ({address}{carried}) is {'an' if kind[0] in 'aeiou' else 'a'} {kind} address; "
                "allow it explicitly in EXPORT_ALLOWED_DESTINATIONS if it is meant to be reached"
            )
        return None

    def _listed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


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
