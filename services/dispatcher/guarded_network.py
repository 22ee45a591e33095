"""The SSRF guard at connect time: every TCP connection the dispatcher opens is checked first.

An httpcore network backend that resolves the host itself, refuses addresses the
:class:`~shared.domain.destinations.DestinationPolicy` does not allow, and connects to the checked
address (so a DNS answer cannot change between the check and the connection). TLS still verifies the
certificate against the host name: httpcore passes it to ``start_tls`` separately.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from shared.domain.destinations import DestinationPolicy
from shared.errors import PermanentError


class DestinationRefused(PermanentError):
    """The destination resolves to an address the SSRF guard refuses."""


class GuardedBackend(httpcore.NetworkBackend):
    """Wraps httpcore's synchronous backend with the destination check."""

    def __init__(self, policy: DestinationPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        refusals = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            refusal = self.policy.refusal(host, address)
            if refusal is None:
                return self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            refusals.append(refusal)
        raise DestinationRefused(refusals[0])

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise DestinationRefused("unix sockets are not export destinations")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def guarded_transport(policy: DestinationPolicy, **options: Any) -> httpx.HTTPTransport:
    """An httpx transport whose connections go through the guard."""
    transport = httpx.HTTPTransport(**options)
    # httpx does not take a network backend as an argument; its connection pool does.
    transport._pool._network_backend = GuardedBackend(policy)
    return transport
