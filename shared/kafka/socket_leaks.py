"""kafka-python 3.0 fixed here: no socket of a Kafka client is left for the garbage collector to close.

kafka-python 3.0.12 leaves sockets open in two places, closed only by their finalizer whenever the garbage
collector gets to them (with a ``ResourceWarning``: ``unclosed <socket.socket ... raddr=(the broker)>``), and a
service reconnecting to a broker that is down holds such descriptors until then:

- ``KafkaNetSocket.sock_connect`` does not close the socket it was given when the connect fails: refused (a broker
  down), timed out, or abandoned (its client closed meanwhile: the client's network selector closes the
  connecting task, and the ``GeneratorExit`` passes through);
- ``NetworkSelector.close`` stops the client's network thread and cancels its tasks, but a connection whose close
  was deferred to flush what it still had to write (``KafkaTCPTransport.close``), or that was never closed, keeps
  its socket registered in the selector, open;
- ``KafkaConnectionManager._build_transport`` drops the TLS transport whose handshake failed (a broker that does
  not speak TLS on that port, a certificate refused) or was abandoned, its socket open; and the plain socket when
  wrapping it for TLS fails.

:func:`close_leaked_sockets` wraps the three, so a failed connect or handshake closes its socket at once and a
closed client closes every socket its selector still watched. Written up for upstream in
``docs/upstream/kafka-python-connect-socket.md``.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from kafka.net.inet import KafkaNetSocket
from kafka.net.selector import NetworkSelector
from kafka.net.transport import KafkaSSLTransport

_MARK = "_member_export_closes_leaked_sockets"


def close_leaked_sockets() -> None:
    """Make kafka-python close a failed connect's or TLS handshake's socket, and a closed client's sockets
    (idempotent)."""
    _close_failed_connects()
    _close_failed_handshakes()
    _close_sockets_left_at_close()


def _close_failed_connects() -> None:
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


def _close_failed_handshakes() -> None:
    original_init = KafkaSSLTransport.__init__
    original_handshake = KafkaSSLTransport.handshake
    if getattr(original_handshake, _MARK, False):
        return

    def init(self: KafkaSSLTransport, net: Any, sock: socket.socket, host: str | None = None, **configs: Any) -> None:
        try:
            original_init(self, net, sock, host=host, **configs)
        except BaseException:  # the TLS context or the wrapping refused: the plain socket is nobody's now
            sock.close()
            raise

    async def handshake(self: KafkaSSLTransport) -> None:
        try:
            await original_handshake(self)
        except BaseException:  # refused, or abandoned (GeneratorExit): the transport is dropped, its socket with it
            self.close()  # nothing written yet: closes the socket at once
            raise

    setattr(handshake, _MARK, True)
    init.__doc__ = original_init.__doc__
    handshake.__doc__ = original_handshake.__doc__
    KafkaSSLTransport.__init__ = init
    KafkaSSLTransport.handshake = handshake


def _close_sockets_left_at_close() -> None:
    original = NetworkSelector.close
    if getattr(original, _MARK, False):
        return

    def close(self: NetworkSelector) -> None:
        if self._closed:  # closed already (or being closed by another thread): its sockets are not ours to close
            original(self)
            return
        if self._io_thread is not None and self._io_thread is not threading.current_thread():
            self.stop()  # what the original does first (idempotent): nothing changes the selector's map after this
        try:  # what the selector watches now: the connections' sockets (and its own wake-up pair)
            watched = [key.fileobj for key in list(self._selector.get_map().values())]
        except Exception:  # noqa: BLE001 - not built, or its map unreadable: close as the original would, no more
            watched = []
        original(self)
        for fileobj in watched:  # the network thread is stopped: nothing will write, read or close these now
            if isinstance(fileobj, socket.socket) and fileobj.fileno() != -1:
                fileobj.close()

    setattr(close, _MARK, True)
    close.__doc__ = original.__doc__
    NetworkSelector.close = close
