"""Host names to addresses, for the SSRF guard at save (the dispatcher checks again at every connection)."""

from __future__ import annotations

import socket


def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to; OSError when it does not resolve."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
