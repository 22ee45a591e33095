"""The SSRF guard judges an IPv6 address that carries an IPv4 address by that IPv4 address (issue 12, finding 11):
at save (the application layer's check) and at connect time (the dispatcher's resolver and transport)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.application.checks import ObjectChecks, destination_problems
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.destinations import DestinationPolicy, embedded_ipv4
from shared.domain.rendering import RenderedRequest
from shared.outbound.guard import DestinationRefused, GuardedResolver, GuardedTransport
from shared.outbound.partner_http import AiohttpPartnerHttp
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp

PUBLIC_ONLY = DestinationPolicy()
MASK32 = 0xFFFFFFFF

ipv4s = st.integers(0, MASK32).map(ipaddress.IPv4Address)


def _v6(value: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(value)


#: Each form carrying exactly one IPv4 address, the way an attacker would write it.
ONE_ADDRESS_FORMS: dict[str, Callable[[int, int], ipaddress.IPv6Address]] = {
    "IPv4-mapped ::ffff:a.b.c.d": lambda v, _: _v6((0xFFFF << 32) | v),
    "IPv4-translated ::ffff:0:a.b.c.d": lambda v, _: _v6((0xFFFF << 48) | v),
    "IPv4-compatible ::a.b.c.d": lambda v, _: _v6(v),  # but :: and ::1, IPv6's own (see below)
    "NAT64 64:ff9b::a.b.c.d": lambda v, _: _v6((0x64FF9B << 96) | v),
    "6to4 2002:aabb:ccdd::/48": lambda v, rest: _v6((0x2002 << 112) | (v << 80) | (rest & ((1 << 80) - 1))),
}


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: DestinationPolicy = PUBLIC_ONLY) -> bool:
    return policy.refusal("partner.example", address) is None


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::127.0.0.1", "127.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),
        ("::ffff:0:7f00:1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1::a00:1", "10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo, client stored inverted
    ],
)
def test_the_addresses_of_the_issue_are_refused_naming_the_ipv4_they_carry(address, carried):
    refusal = PUBLIC_ONLY.refusal("partner.example", ipaddress.ip_address(address))
    assert refusal is not None
    assert f"carries IPv4 {carried})" in refusal


@pytest.mark.parametrize("address", ["::1", "::"])
def test_ipv6_loopback_and_unspecified_are_judged_as_themselves(address):
    refusal = PUBLIC_ONLY.refusal("h", ipaddress.ip_address(address))
    assert refusal is not None
    assert "carries" not in refusal


@pytest.mark.parametrize("form", list(ONE_ADDRESS_FORMS))
@given(ipv4=ipv4s, rest=st.integers(0, (1 << 80) - 1))
def test_an_ipv6_form_carrying_an_ipv4_address_is_judged_exactly_as_that_address(form, ipv4, rest):
    assume(int(ipv4) > 1 or not form.startswith("IPv4-compatible"))
    wrapped = ONE_ADDRESS_FORMS[form](int(ipv4), rest)
    assert embedded_ipv4(wrapped) == (ipv4,)
    assert _allowed(wrapped) == _allowed(ipv4)


@given(server=ipv4s, client=ipv4s, flags_and_port=st.integers(0, MASK32))
def test_a_teredo_address_is_allowed_only_when_its_server_and_its_client_are(server, client, flags_and_port):
    teredo = _v6((0x20010000 << 96) | (int(server) << 64) | (flags_and_port << 32) | (~int(client) & MASK32))
    assert set(embedded_ipv4(teredo)) == {server, client}
    assert _allowed(teredo) == (_allowed(server) and _allowed(client))


@given(ipv4=ipv4s, suffix_bits=st.integers(0, (1 << 48) - 1))
def test_every_reading_of_the_local_use_nat64_prefix_is_judged(ipv4, suffix_bits):
    """64:ff9b:1::/48 may be used with a /48, /56, /64 or /96 prefix: a refused IPv4 in any layout refuses it."""
    local_use = int(ipaddress.IPv6Address("64:ff9b:1::"))
    as_96 = _v6(local_use | (suffix_bits & ((1 << 32) - 1) << 32) | int(ipv4))
    as_64 = _v6(local_use | (int(ipv4) << 24) | (suffix_bits & 0xFFFFFF))
    for address in (as_96, as_64):
        assert ipv4 in embedded_ipv4(address)
        if not _allowed(ipv4):
            assert not _allowed(address)


@given(ipv4=ipv4s)
def test_an_allowed_ipv4_network_allows_its_addresses_in_every_ipv6_form(ipv4):
    assume(int(ipv4) > 1)
    network = ipaddress.IPv4Network(f"{ipv4}/32")
    policy = DestinationPolicy.parse(str(network))
    for form in ONE_ADDRESS_FORMS.values():
        assert _allowed(form(int(ipv4), 0), policy)


def test_an_allowed_ipv6_network_is_allowed_as_written():
    policy = DestinationPolicy.parse("64:ff9b::/96")
    assert _allowed(ipaddress.ip_address("64:ff9b::a00:1"), policy)
    assert not _allowed(ipaddress.ip_address("::ffff:10.0.0.1"), policy)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_destinations_stay_allowed(address):
    assert _allowed(ipaddress.ip_address(address))


# --- the same function at save and at connect time -----------------------------------------------


def test_a_profile_whose_host_resolves_to_a_wrapped_loopback_is_refused_at_save():
    profile = ConnectionProfile(name="p", base_url="https://partner.example/v1")
    checks = ObjectChecks(policy=PUBLIC_ONLY, resolve_host=lambda host: ["64:ff9b::7f00:1"])
    [problem] = destination_problems(profile, checks)
    assert problem.startswith("ConnectionProfile 'p': field 'base_url': destination partner.example")
    assert "carries IPv4 127.0.0.1" in problem


class _Answers(AbstractResolver):
    """A DNS answer chosen by the test (the attacker's name server)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("answer", ["::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "::ffff:0:7f00:1"])
def test_the_dispatchers_resolver_drops_a_wrapped_loopback_answer(answer):
    resolver = GuardedResolver(PUBLIC_ONLY, _Answers(answer, "2606:4700::1111"))
    kept = asyncio.run(resolver.resolve("partner.example", 443))
    assert [a["host"] for a in kept] == ["2606:4700::1111"]
    with pytest.raises(DestinationRefused, match=r"carries IPv4 127\.0\.0\.1"):
        asyncio.run(GuardedResolver(PUBLIC_ONLY, _Answers(answer)).resolve("partner.example", 443))


@pytest.mark.parametrize("literal", ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::ffff:0:7f00:1]"])
def test_the_dispatchers_transport_refuses_a_wrapped_loopback_literal_before_sending(literal):
    sent: list[httpx.Request] = []

    def partner(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    async def post() -> None:
        async with httpx.AsyncClient(transport=GuardedTransport(PUBLIC_ONLY, httpx.MockTransport(partner))) as client:
            await client.post(f"http://{literal}:8080/members", json=[])

    with pytest.raises(DestinationRefused, match="is a loopback address"):
        asyncio.run(post())
    assert sent == []


@pytest.mark.parametrize("partner_http", [AiohttpPartnerHttp, ReqwestPartnerHttp])
@pytest.mark.parametrize("literal", ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "127.0.0.1", "[::ffff:0:7f00:1]"])
def test_the_partner_sender_refuses_a_loopback_literal_before_connecting(literal, partner_http):
    request = RenderedRequest("POST", f"http://{literal}:9/members", {"Content-Type": "application/json"}, b"[]")

    async def send() -> None:
        partners = partner_http(PUBLIC_ONLY)
        try:
            await partners.send(request, timeout=1)
        finally:
            await partners.aclose()

    with pytest.raises(DestinationRefused, match=r"is a loopback address|carries IPv4 127"):
        asyncio.run(send())
