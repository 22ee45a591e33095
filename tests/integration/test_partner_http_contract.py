"""The partner-HTTP port's contract, on both clients of EXPORT_DISPATCHER_HTTP_CLIENT (aiohttp, reqwest), against
real servers on loopback; and how the reqwest client pins names to the addresses the SSRF guard allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.outbound.guard import DestinationRefused
from shared.outbound.partner_http import NoAnswer, PartnerAnswer, TlsRefused
from shared.outbound.partner_network import PartnerNetwork
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp
from tests.dispatcher_helpers import PARTNER_HTTP

pytestmark = pytest.mark.integration
LOOPBACK_ONE = DestinationPolicy.parse("127.0.0.1")
CLIENTS = pytest.mark.parametrize("kind", sorted(PARTNER_HTTP))


def post(url: str, headers: dict[str, str] | None = None) -> RenderedRequest:
    return RenderedRequest("POST", url, {"Content-Type": "application/json", **(headers or {})}, b'[{"id":1}]')


@asynccontextmanager
async def serving(handler: Callable[[web.Request], Any], host: str = "127.0.0.1", port: int = 0, **ssl_: Any):
    """An aiohttp server on ``host`` answering every path with ``handler``; yields its base URL's port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_.get("ssl_context"))
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@contextmanager
def listener(host: str, port: int = 0) -> Iterator[tuple[int, list[socket.socket]]]:
    """A socket listening on ``host`` that records every connection made to it (and answers nothing)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    sock.setblocking(False)
    accepted: list[socket.socket] = []

    def accept() -> None:
        connection, _ = sock.accept()
        accepted.append(connection)

    loop = asyncio.get_running_loop()
    loop.add_reader(sock, accept)
    try:
        yield sock.getsockname()[1], accepted
    finally:
        loop.remove_reader(sock)
        for connection in accepted:
            connection.close()
        sock.close()


class Answers(AbstractResolver):
    """The DNS answers chosen by the test, one list a resolution (the last one repeated); an OSError raised;
    ``until``: every resolution waits for it first (a slow resolver)."""

    def __init__(self, *answers: list[str] | OSError, until: asyncio.Event | None = None) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.until = until

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.until is not None:
            await self.until.wait()
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, OSError):
            raise answer
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in answer
        ]

    async def close(self) -> None:
        pass


def spy_on_aiohttp(partners: ReqwestPartnerHttp) -> list[str]:
    """The URLs ``partners`` sends through its inner aiohttp client, from now on."""
    through_aiohttp: list[str] = []
    inner_send = partners.aiohttp.send

    async def spy(request: RenderedRequest, timeout: float, network: PartnerNetwork | None = None) -> Any:
        through_aiohttp.append(request.url)
        return await inner_send(request, timeout, network)

    partners.aiohttp.send = spy  # type: ignore[method-assign]
    return through_aiohttp


def answering_status(status: int) -> Callable[[web.Request], Any]:
    """A handler answering ``status`` with no body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status)

    return handler


async def answering(raw: bytes) -> asyncio.Server:
    """A server answering every request with ``raw`` bytes, then closing the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def raw_answer(partners: Any, raw: bytes) -> PartnerAnswer:
    """The answer ``partners`` makes of ``raw`` bytes a server answers (``partners`` closed after it)."""
    server = await answering(raw)
    try:
        port = server.sockets[0].getsockname()[1]
        return await send_once(partners, post(f"http://127.0.0.1:{port}/members"))
    finally:
        server.close()


async def send(partners: Any, request: RenderedRequest, timeout: float = 5.0) -> PartnerAnswer:
    answer: PartnerAnswer = await partners.send(request, timeout)
    return answer


async def send_once(partners: Any, request: RenderedRequest, timeout: float = 5.0) -> PartnerAnswer:
    """``request``'s answer from ``partners``, closed after it."""
    try:
        return await send(partners, request, timeout)
    finally:
        await partners.aclose()


# --- the contract, on both clients ----------------------------------------------------------------------------


@CLIENTS
def test_an_answer_gives_status_retry_after_headers_and_at_most_the_bounded_body(kind):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "7", "X-Partner": "p"}, body=b"e" * 1_000_000)

    async def scenario() -> PartnerAnswer:
        async with serving(handler) as port:
            return await send_once(
                PARTNER_HTTP[kind](LOOPBACK_ONE, max_body_bytes=1000), post(f"http://127.0.0.1:{port}/members")
            )

    answer = asyncio.run(scenario())
    assert (answer.status, answer.retry_after, answer.body) == (503, "7", b"e" * 1000)
    assert dict((name.lower(), value) for name, value in answer.headers.items())["x-partner"] == "p"


@CLIENTS
def test_a_redirect_is_the_partners_answer_and_not_followed(kind):
    async def elsewhere(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response(text="reached")

    reached: list[str] = []

    async def scenario() -> PartnerAnswer:
        async with serving(elsewhere) as other:

            async def moving(request: web.Request) -> web.StreamResponse:
                return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{other}/stolen"})

            async with serving(moving) as port:
                return await send_once(PARTNER_HTTP[kind](LOOPBACK_ONE), post(f"http://127.0.0.1:{port}/members"))

    answer = asyncio.run(scenario())
    assert answer.status == 307
    assert reached == []


@CLIENTS
def test_no_answer_within_the_timeout_is_a_no_answer_saying_so(kind):
    async def scenario() -> None:
        never = asyncio.Event()

        async def hanging(request: web.Request) -> web.StreamResponse:
            await never.wait()  # answers nothing until the test ends
            return web.Response()

        async with serving(hanging) as port:
            partners = PARTNER_HTTP[kind](LOOPBACK_ONE)
            try:
                with pytest.raises(NoAnswer, match=r"^TimeoutError: no answer within the profile's timeout$"):
                    await send(partners, post(f"http://127.0.0.1:{port}/members"), timeout=0.3)
            finally:
                never.set()
                await partners.aclose()

    asyncio.run(scenario())


@CLIENTS
def test_a_body_that_stalls_is_a_no_answer_at_the_timeout_too(kind):
    async def scenario() -> None:
        never = asyncio.Event()

        async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            await never.wait()  # the rest of the body never comes
            writer.close()

        server = await asyncio.start_server(stalling, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        partners = PARTNER_HTTP[kind](LOOPBACK_ONE)
        try:
            with pytest.raises(NoAnswer, match=r"^TimeoutError: no answer within the profile's timeout$"):
                await send(partners, post(f"http://127.0.0.1:{port}/members"), timeout=0.5)
        finally:
            never.set()
            await partners.aclose()
            server.close()

    asyncio.run(scenario())


@CLIENTS
def test_a_refused_connection_is_a_no_answer_naming_the_host(kind):
    async def scenario() -> None:
        with listener("127.0.0.1") as (port, _):
            pass  # closed: nothing listens on the port any more
        with pytest.raises(NoAnswer, match=f"Cannot connect to host 127.0.0.1:{port} "):
            await send_once(PARTNER_HTTP[kind](LOOPBACK_ONE), post(f"http://127.0.0.1:{port}/members?api_key=s3cret"))

    asyncio.run(scenario())


@CLIENTS
def test_a_connection_closed_without_an_answer_is_a_no_answer_that_does_not_quote_the_url(kind):
    async def scenario() -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(cut, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        partners = PARTNER_HTTP[kind](LOOPBACK_ONE)
        try:
            with pytest.raises(NoAnswer) as caught:
                await send(partners, post(f"http://127.0.0.1:{port}/members?api_key=s3cret"))
            assert "s3cret" not in str(caught.value)
            assert "Cannot connect" not in str(caught.value)  # it connected: the request went out, unanswered
        finally:
            await partners.aclose()
            server.close()

    asyncio.run(scenario())


@CLIENTS
def test_the_rendered_url_reaches_the_partner_byte_for_byte(kind):
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        return web.Response()

    path = "/v1/members/a%2Fb%20c/%7Ex?q=%2e%2e&r=1%2B1"

    async def scenario() -> None:
        async with serving(handler) as port:
            await send_once(PARTNER_HTTP[kind](LOOPBACK_ONE), post(f"http://127.0.0.1:{port}{path}"))

    asyncio.run(scenario())
    assert seen == [path]


@CLIENTS
def test_a_header_value_http_cannot_carry_is_an_error_and_no_request_is_made(kind):
    reached: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response()

    async def scenario() -> None:
        async with serving(handler) as port:
            with pytest.raises(ValueError, match=r"(?i)header"):
                await send_once(
                    PARTNER_HTTP[kind](LOOPBACK_ONE),
                    post(f"http://127.0.0.1:{port}/members", {"X-Name": "Eve\r\nX-Admin: 1"}),
                )

    asyncio.run(scenario())
    assert reached == []


@CLIENTS
def test_a_partner_certificate_the_system_does_not_trust_is_refused_saying_so(kind):
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    async def scenario() -> None:
        async with serving(handler, ssl_context=server) as port:
            with pytest.raises(TlsRefused, match=r"^TLS: the partner's certificate is not trusted .*tls.ca_bundle"):
                await send_once(PARTNER_HTTP[kind](LOOPBACK_ONE), post(f"https://127.0.0.1:{port}/members"))

    asyncio.run(scenario())


@CLIENTS
@pytest.mark.parametrize("host", ["127.0.0.2", "[::ffff:7f00:2]", "10.1.2.3"])  # as URL parsers write them
def test_an_ip_literal_the_guard_refuses_is_refused_before_any_connection(kind, host):
    async def scenario() -> None:
        partners = PARTNER_HTTP[kind](LOOPBACK_ONE)
        through_aiohttp = spy_on_aiohttp(partners) if kind == "reqwest" else []
        with pytest.raises(DestinationRefused, match=r"^destination \S+ \(.*\) is a (loopback|private) address"):
            await send_once(partners, post(f"http://{host}:9/members"))
        assert through_aiohttp == []  # the reqwest client judged it itself

    asyncio.run(scenario())


# --- the reqwest client: names pinned to what the guard resolved and allowed ----------------------------------


def test_a_name_goes_to_the_address_the_guard_resolved_reqwest_never_resolves_it():
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.host)
        return web.Response(status=202)

    async def scenario() -> PartnerAnswer:
        async with serving(handler) as port:
            # partner.test resolves nowhere but in the test's resolver: only a pinned address can reach the server.
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=Answers(["127.0.0.1"]))
            try:
                answer = await send(partners, post(f"http://partner.test:{port}/members"))
                assert len(partners) == 1
                return answer
            finally:
                await partners.aclose()

    assert asyncio.run(scenario()).status == 202
    assert len(seen) == 1
    assert seen[0].startswith("partner.test:")  # the Host header names the partner


def test_a_name_resolving_only_to_a_refused_address_is_refused_and_never_connected():
    async def scenario() -> None:
        with listener("127.0.0.2") as (port, accepted):
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=Answers(["127.0.0.2"]))
            try:
                with pytest.raises(DestinationRefused) as caught:
                    await send(partners, post(f"http://partner.test:{port}/members"))
            finally:
                await partners.aclose()
            assert accepted == []
            assert len(partners) == 0
        # The guard's own words, as the aiohttp client says them.
        assert str(caught.value) == LOOPBACK_ONE.refusal("partner.test", ipaddress.ip_address("127.0.0.2"))

    asyncio.run(scenario())


def test_a_name_rebound_to_a_refused_address_is_refused_at_the_next_resolution_and_never_connected():
    async def scenario() -> None:
        seen: list[str] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            seen.append(request.path)
            return web.Response()

        async with serving(handler) as port:
            with listener("127.0.0.2", port) as (_, accepted):
                resolver = Answers(["127.0.0.1"], ["127.0.0.2"])
                partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=resolver, pin_seconds=0)
                try:
                    assert (await send(partners, post(f"http://partner.test:{port}/first"))).status == 200
                    with pytest.raises(DestinationRefused, match="is a loopback address"):
                        await send(partners, post(f"http://partner.test:{port}/second"))
                finally:
                    await partners.aclose()
                assert accepted == []
                assert (seen, resolver.calls) == (["/first"], 2)

    asyncio.run(scenario())


def test_a_name_whose_allowed_address_changes_gets_a_new_client_pinned_to_it():
    async def scenario() -> None:
        seen: list[str] = []

        def at(address: str) -> Callable[[web.Request], Any]:
            async def handler(request: web.Request) -> web.StreamResponse:
                seen.append(address)
                return web.Response()

            return handler

        async with serving(at("127.0.0.1")) as port, serving(at("127.0.0.2"), "127.0.0.2", port):
            resolver = Answers(["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"])
            partners = ReqwestPartnerHttp(DestinationPolicy.parse("127.0.0.0/8"), resolver=resolver, pin_seconds=0)
            try:
                for _ in range(3):
                    await send(partners, post(f"http://partner.test:{port}/members"))
                assert len(partners) == 1
            finally:
                await partners.aclose()
        assert seen == ["127.0.0.1", "127.0.0.1", "127.0.0.2"]

    asyncio.run(scenario())


def test_a_name_that_does_not_resolve_is_a_no_answer_and_resolved_again_next_time():
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=201)

    async def scenario() -> None:
        async with serving(handler) as port:
            resolver = Answers(OSError(-2, "Name or service not known"), ["127.0.0.1"])
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=resolver)
            try:
                with pytest.raises(NoAnswer, match=f"Cannot connect to host partner.test:{port} "):
                    await send(partners, post(f"http://partner.test:{port}/members"))
                assert (await send(partners, post(f"http://partner.test:{port}/members"))).status == 201
            finally:
                await partners.aclose()

    asyncio.run(scenario())


def test_at_most_max_clients_names_are_pinned_the_least_recently_used_retired():
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    async def scenario() -> None:
        async with serving(handler) as port:
            resolver = Answers(["127.0.0.1"])
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=resolver, max_clients=2)
            try:
                for name in ("a.test", "b.test", "c.test", "a.test"):
                    await send(partners, post(f"http://{name}:{port}/members"))
                assert len(partners) == 2
                assert resolver.calls == 4  # a.test was retired by c.test, and resolved again
            finally:
                await partners.aclose()

    asyncio.run(scenario())


def test_concurrent_requests_to_a_name_share_one_resolution():
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    async def scenario() -> None:
        async with serving(handler) as port:
            resolver = Answers(["127.0.0.1"])
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=resolver)
            try:
                request = post(f"http://partner.test:{port}/members")
                answers = await asyncio.gather(*(send(partners, request) for _ in range(20)))
            finally:
                await partners.aclose()
            assert [answer.status for answer in answers] == [200] * 20
            assert resolver.calls == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "http://LOCALHOST:{port}/members",  # reqwest would lowercase it: its pins are looked up by the lowercase name
        "http://127.0.0.1:{port}/a/../members",  # reqwest would remove the dot segments
        "http://user:pw@127.0.0.1:{port}/members",  # credentials in the URL
    ],
)
def test_a_host_or_url_reqwest_would_not_send_as_written_goes_through_aiohttp(url):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def scenario() -> None:
        async with serving(handler) as port:
            partners = ReqwestPartnerHttp(DestinationPolicy.parse("127.0.0.1, localhost"))
            through_aiohttp = spy_on_aiohttp(partners)
            try:
                answer = await send(partners, post(url.format(port=port)))
            finally:
                await partners.aclose()
            assert answer.status == 204
            assert through_aiohttp == [url.format(port=port)]
            assert len(partners) == 0

    asyncio.run(scenario())


def test_a_default_route_given_its_own_ca_goes_through_aiohttp_with_it():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=208)

    async def scenario() -> PartnerAnswer:
        async with serving(handler, ssl_context=server) as port:
            return await send_once(
                ReqwestPartnerHttp(LOOPBACK_ONE, ssl_context=client), post(f"https://127.0.0.1:{port}/members")
            )

    assert asyncio.run(scenario()).status == 208


# --- what the reqwest client's review found (each test failed on the reqwest client before its fix) -----------


@CLIENTS
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "GET"])
def test_a_request_with_an_empty_body_is_sent_with_content_length_zero(kind, method):
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Content-Length"))
        return web.Response(status=204)

    async def scenario() -> PartnerAnswer:
        async with serving(handler) as port:
            request = RenderedRequest(method, f"http://127.0.0.1:{port}/members", {"Content-Type": "text/plain"}, b"")
            return await send_once(PARTNER_HTTP[kind](LOOPBACK_ONE), request)

    assert asyncio.run(scenario()).status == 204
    assert seen == ["0"]  # some servers answer 411 Length Required without it


@CLIENTS
def test_an_answer_header_that_is_no_utf8_costs_neither_the_answer_nor_its_other_headers(kind):
    raw = b"HTTP/1.1 503 Busy\r\nRetry-After: 5\xff\r\nX-Message: caf\xe9\r\nX-Ok: yes\r\nContent-Length: 0\r\n\r\n"
    answer = asyncio.run(raw_answer(PARTNER_HTTP[kind](LOOPBACK_ONE), raw))
    assert answer.status == 503  # still a retryable answer, not a failure of the request
    headers = {name.lower(): value for name, value in answer.headers.items()}  # the attempt inspector reads them
    assert headers["x-ok"] == "yes"
    # aiohttp keeps the bytes as surrogates; the reqwest client cannot get them and leaves the header out.
    assert answer.retry_after == {"aiohttp": "5\udcff", "reqwest": None}[kind]


@CLIENTS
def test_an_answer_header_with_a_control_character_is_still_an_answer(kind):
    answer = asyncio.run(
        raw_answer(PARTNER_HTTP[kind](LOOPBACK_ONE), b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\r\nContent-Length: 2\r\n\r\nok")
    )
    assert (answer.status, answer.body) == (200, b"ok")


@CLIENTS
def test_a_tls12_partner_offering_only_cbc_suites_is_reached(kind, tmp_path, monkeypatch):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server.set_ciphers("ECDHE-ECDSA-AES128-SHA256")  # in Python's default client ciphers; not in rustls'
    ca.issue_cert("127.0.0.1").configure_cert(server)

    async def scenario() -> None:
        async with serving(answering_status(200), ssl_context=server) as port:
            partners = PARTNER_HTTP[kind](LOOPBACK_ONE)
            through_aiohttp = spy_on_aiohttp(partners) if kind == "reqwest" else []
            try:
                for _ in range(2):
                    assert (await send(partners, post(f"https://127.0.0.1:{port}/members"))).status == 200
            finally:
                await partners.aclose()
            if kind == "reqwest":  # the failed handshake's request and the next one, through aiohttp
                assert len(through_aiohttp) == 2

    asyncio.run(scenario())


def test_a_name_with_more_than_one_allowed_address_goes_through_aiohttp_which_fails_over(monkeypatch):
    async def scenario() -> None:
        async with serving(answering_status(200)) as port:  # on 127.0.0.1; nothing listens on 127.0.0.3
            resolver = Answers(["127.0.0.3", "127.0.0.1"])  # round-robin DNS with a dead backend first
            monkeypatch.setattr(aiohttp, "DefaultResolver", lambda: resolver)  # aiohttp's resolver too
            partners = ReqwestPartnerHttp(DestinationPolicy.parse("127.0.0.0/8"))
            through_aiohttp = spy_on_aiohttp(partners)
            try:
                for _ in range(2):
                    assert (await send(partners, post(f"http://partner.test:{port}/members"))).status == 200
                assert len(partners) == 0
                assert len(through_aiohttp) == 2
            finally:
                await partners.aclose()

    asyncio.run(scenario())


def test_the_name_resolution_counts_in_the_requests_timeout_and_goes_on_for_the_next_requests():
    async def scenario() -> None:
        answered = asyncio.Event()
        async with serving(answering_status(201)) as port:
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=Answers(["127.0.0.1"], until=answered))
            request = post(f"http://partner.test:{port}/members")
            try:
                with pytest.raises(NoAnswer, match=r"^TimeoutError: no answer within the profile's timeout$"):
                    # Before: the request waited for the resolver, whatever its timeout (bounded here by the test).
                    await asyncio.wait_for(send(partners, request, timeout=0.3), 10)
                answered.set()
                assert (await send(partners, request)).status == 201
            finally:
                answered.set()
                await partners.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("grace", [60.0, 0.0])
def test_a_dns_outage_keeps_the_allowed_pin_and_its_client_for_the_grace_period(grace):
    async def scenario() -> None:
        async with serving(answering_status(200)) as port:
            outage = OSError(-3, "Temporary failure in name resolution")
            resolver = Answers(["127.0.0.1"], outage)
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=resolver, pin_seconds=0, pin_grace_seconds=grace)
            request = post(f"http://partner.test:{port}/members")
            try:
                assert (await send(partners, request)).status == 200
                warm = partners._clients.pinned["partner.test"]
                if grace:
                    assert (await send(partners, request)).status == 200
                    assert partners._clients.pinned["partner.test"] is warm
                    assert not warm.retired
                else:  # past the grace period: the outage is the request's failure, as aiohttp's
                    with pytest.raises(NoAnswer, match="Temporary failure in name resolution"):
                        await send(partners, request)
                    assert warm.retired
                    assert len(partners) == 0
                assert resolver.calls == 2
            finally:
                await partners.aclose()

    asyncio.run(scenario())


def test_an_lru_eviction_never_closes_the_client_a_request_is_about_to_use():
    async def scenario() -> list[Any]:
        async with serving(answering_status(200)) as port:
            partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=Answers(["127.0.0.1"]), max_clients=1)
            try:
                return await asyncio.gather(
                    *(send(partners, post(f"http://{name}:{port}/members")) for name in ("a.test", "b.test")),
                    return_exceptions=True,
                )
            finally:
                await partners.aclose()

    assert [getattr(answer, "status", repr(answer)) for answer in asyncio.run(scenario())] == [200, 200]


def test_an_answer_header_longer_than_aiohttps_line_limit_is_left_out():
    raw = b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 9000 + b"\r\nX-Ok: yes\r\nContent-Length: 0\r\n\r\n"
    answer = asyncio.run(raw_answer(ReqwestPartnerHttp(LOOPBACK_ONE), raw))
    assert answer.status == 200
    assert {name.lower() for name in answer.headers} == {"x-ok", "content-length"}


def test_closing_closes_a_retired_client_whose_request_is_still_in_flight():
    async def scenario() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(request: web.Request) -> web.StreamResponse:
            entered.set()
            await release.wait()
            return web.Response(status=201)

        async def fast(request: web.Request) -> web.StreamResponse:
            return web.Response(status=202)

        async with serving(slow) as port, serving(fast, "127.0.0.2", port):
            resolver = Answers(["127.0.0.1"], ["127.0.0.2"])
            partners = ReqwestPartnerHttp(DestinationPolicy.parse("127.0.0.0/8"), resolver=resolver, pin_seconds=0)
            first = asyncio.ensure_future(send(partners, post(f"http://partner.test:{port}/first")))
            try:
                await asyncio.wait_for(entered.wait(), 5)
                old = partners._clients.pinned["partner.test"]
                assert (await send(partners, post(f"http://partner.test:{port}/second"))).status == 202
                assert old.retired
                assert old.requests == 1
                closes: list[object] = []
                inner = old.client

                class Recording:  # the retired client, its close() recorded
                    def __getattr__(self, name: str) -> Any:
                        return getattr(inner, name)

                    async def close(self) -> None:
                        closes.append(inner)
                        await inner.close()

                old.client = Recording()  # type: ignore[assignment]
                await asyncio.wait_for(partners.aclose(), 5)
                assert closes == [inner]  # closed at shutdown (before: left open, never closed)
                with pytest.raises(NoAnswer):  # the request in flight ends (at its timeout at the latest)
                    await asyncio.wait_for(first, 10)
            finally:
                release.set()
                await partners.aclose()

    asyncio.run(scenario())


def test_a_name_resolution_that_ends_after_the_close_builds_no_client_and_its_request_fails():
    async def scenario() -> None:
        resolving, release = asyncio.Event(), asyncio.Event()

        class Slow(Answers):  # says when the resolution has begun, then waits for the test
            async def resolve(
                self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
            ) -> list[ResolveResult]:
                resolving.set()
                return await super().resolve(host, port, family)

        partners = ReqwestPartnerHttp(LOOPBACK_ONE, resolver=Slow(["127.0.0.1"], until=release))
        built: list[object] = []
        inner_builder = partners._builder

        def builder() -> Any:
            built.append(object())
            return inner_builder()

        partners._builder = builder  # type: ignore[method-assign]
        request = asyncio.ensure_future(send(partners, post("http://partner.test:9/members"), timeout=10))
        try:
            await asyncio.wait_for(resolving.wait(), 5)
            await asyncio.wait_for(partners.aclose(), 5)
            release.set()
            with pytest.raises(NoAnswer, match="closed while the host's name was resolved"):
                await asyncio.wait_for(request, 5)
            # Before: the resolution built the name's client after the close and kept it pinned, never closed.
            assert built == []
            assert not partners._clients.pinned
        finally:
            release.set()
            await partners.aclose()

    asyncio.run(scenario())
