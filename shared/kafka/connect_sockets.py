"""kafka-python 3.0 fixed here: a connect that fails or is abandoned closes its socket.

kafka-python 3.0.12's ``KafkaNetSocket.sock_connect`` leaves the socket it was given open when the connect
fails: refused (a broker down), timed out, or abandoned (its client closed meanwhile: the client's network
selector closes the connecting task, and the ``GeneratorExit`` passes through without a ``close()``). The
socket is then closed only by its finalizer, whenever the garbage collector gets to it, with a
``ResourceWarning`` (``unclosed <socket.socket ... laddr=('127.0.0.1', ...), raddr=(the broker)>`` when the
kernel had already finished the handshake). A service reconnecting to a broker that is down holds such
descriptors until then. :func:`close_sockets_of_failed_connects` wraps the method so that every way out of it
but success closes the socket at once. Written up for upstream in ``docs/upstream/kafka-python-connect-socket.md``.
"""

from __future__ import annotations

import socket
from typing import Any

from kafka.net.inet import KafkaNetSocket

_MARK = "_member_export_closes_failed_connects"


def close_sockets_of_failed_connects() -> None:
    """Make kafka-python close a connect's socket when the connect does not succeed (idempotent)."""
    original = KafkaNetSocket.sock_connect
    if getattr(original, _MARK, False):
        return

    async def sock_connect(
        self: KafkaNetSocket, net: Any, sock: socket.socket, sockaddr: Any, timeout_at: float | None = None
    ) -> socket.socket:
        try:
            connected: socket.socket = await original(self, net, sock, sockaddr, timeout_at=timeout_at)
        except BaseException:  # refused, timed out, or abandoned (GeneratorExit): the socket is nobody's now
            sock.close()
            raise
        return connected

    setattr(sock_connect, _MARK, True)
    sock_connect.__doc__ = original.__doc__
    KafkaNetSocket.sock_connect = sock_connect
