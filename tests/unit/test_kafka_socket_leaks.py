"""kafka-python leaves no socket to the garbage collector: failed connects and closed clients close theirs
(shared.kafka.socket_leaks)."""

from __future__ import annotations

import selectors
import socket
import ssl
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from kafka.net.inet import KafkaNetSocket
from kafka.net.selector import NetworkSelector
from kafka.net.transport import KafkaSSLTransport

from devtools.processes import wait_until
from shared.kafka.socket_leaks import close_leaked_sockets


class _WaitingNet:
    """kafka-python's network selector as a connect sees it: waiting for writability suspends the task."""

    def wait_write(self, sock: socket.socket, timeout_at: float | None = None) -> Any:
        return _Suspend()


class _Suspend:
    def __await__(self) -> Generator[str, None, None]:
        yield "waiting for the socket to be writable"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def _nonblocking() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def test_a_connect_abandoned_by_its_closed_client_closes_its_socket(listener: socket.socket) -> None:
    close_leaked_sockets()
    sock = _nonblocking()
    connect = KafkaNetSocket().sock_connect(_WaitingNet(), sock, listener.getsockname())
    assert connect.send(None) == "waiting for the socket to be writable"
    connect.close()  # what the selector does to the connecting task of a client being closed
    assert sock.fileno() == -1, "the abandoned connect left its socket open"


def test_a_refused_connect_closes_its_socket() -> None:
    close_leaked_sockets()
    with socket.create_server(("127.0.0.1", 0)) as closed_soon:
        address = closed_soon.getsockname()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)  # blocking: the refusal is the connect's own answer, no selector needed
    connect = KafkaNetSocket().sock_connect(_WaitingNet(), sock, address)
    with pytest.raises(Exception, match="ECONNREFUSED"):
        connect.send(None)
    assert sock.fileno() == -1, "the refused connect left its socket open"


def test_a_connect_that_succeeds_keeps_its_socket_open(listener: socket.socket) -> None:
    close_leaked_sockets()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        connect = KafkaNetSocket().sock_connect(_WaitingNet(), sock, listener.getsockname())
        with pytest.raises(StopIteration) as done:
            connect.send(None)
        assert done.value.value is sock
        assert sock.fileno() != -1
        assert sock.getpeername() == listener.getsockname()


def test_the_fix_is_applied_once_however_often_it_is_asked_for() -> None:
    close_leaked_sockets()
    applied = KafkaNetSocket.sock_connect
    close_leaked_sockets()
    assert KafkaNetSocket.sock_connect is applied


def test_a_closed_client_closes_the_sockets_its_network_selector_still_watched(listener: socket.socket) -> None:
    close_leaked_sockets()
    net = NetworkSelector()
    connection = socket.create_connection(listener.getsockname(), timeout=5)
    connection.setblocking(False)

    async def reading() -> None:  # a connection left open (its close deferred until its writes were flushed)
        await net.wait_read(connection)

    net.call_soon(reading())
    net.poll(timeout_ms=0)
    net.close()
    assert connection.fileno() == -1, "the closed selector left a connection's socket open"


def test_a_second_close_of_a_selector_closes_nothing_more(listener: socket.socket) -> None:
    close_leaked_sockets()
    net = NetworkSelector()
    net.close()
    connection = socket.create_connection(listener.getsockname(), timeout=5)
    net._selector = selectors.DefaultSelector()  # a selector closed already, watching a socket it does not own
    net._selector.register(connection, selectors.EVENT_READ)
    net.close()
    assert connection.fileno() != -1, "a second close closed a socket"
    net._selector.close()
    connection.close()


def test_a_selector_with_its_network_thread_running_is_stopped_before_its_sockets_are_closed(
    listener: socket.socket,
) -> None:
    close_leaked_sockets()
    net = NetworkSelector()
    connection = socket.create_connection(listener.getsockname(), timeout=5)
    connection.setblocking(False)

    async def reading() -> None:
        await net.wait_read(connection)

    net.start()
    net.call_soon_threadsafe(lambda: net.call_soon(reading()))
    wait_until(
        lambda: connection in [key.fileobj for key in list(net._selector.get_map().values())],
        timeout=5,
        interval=0.01,
        what="the network thread watching the connection",
    )
    io_thread = net._io_thread
    net.close()
    assert io_thread is not None
    assert not io_thread.is_alive()
    assert connection.fileno() == -1


class _TlsNet(_WaitingNet):
    """The selector as a TLS handshake and a transport's close see it."""

    def wait_read(self, sock: socket.socket, timeout_at: float | None = None) -> Any:
        return _Suspend()

    def unregister_event(self, sock: socket.socket, events: int) -> None:
        pass

    def cancel(self, task: Any) -> None:
        pass


def _connected(listener: socket.socket, *, blocking: bool) -> tuple[socket.socket, socket.socket]:
    sock = socket.create_connection(listener.getsockname(), timeout=5)
    sock.setblocking(blocking)
    if blocking:
        sock.settimeout(5)
    peer, _ = listener.accept()
    return sock, peer


def _tls_transport(sock: socket.socket, **configs: Any) -> KafkaSSLTransport:
    return KafkaSSLTransport(_TlsNet(), sock, host="127.0.0.1", ssl_check_hostname=False, **configs)


def test_a_tls_handshake_refused_closes_its_socket(listener: socket.socket) -> None:
    close_leaked_sockets()
    sock, peer = _connected(listener, blocking=True)
    with peer:
        peer.sendall(b"HTTP/1.1 400 not TLS\r\n\r\n")  # a port that does not speak TLS
        transport = _tls_transport(sock)
        wrapped = transport._sock
        handshake = transport.handshake()
        with pytest.raises(ssl.SSLError):
            handshake.send(None)
    assert wrapped.fileno() == -1, "the refused handshake left its socket open"


def test_a_tls_handshake_abandoned_by_its_closed_client_closes_its_socket(listener: socket.socket) -> None:
    close_leaked_sockets()
    sock, peer = _connected(listener, blocking=False)
    with peer:
        transport = _tls_transport(sock)
        wrapped = transport._sock
        handshake = transport.handshake()
        assert handshake.send(None) == "waiting for the socket to be writable"  # the broker's answer awaited
        handshake.close()
    assert wrapped.fileno() == -1, "the abandoned handshake left its socket open"


def test_a_tls_transport_that_cannot_be_built_closes_the_plain_socket(listener: socket.socket) -> None:
    close_leaked_sockets()
    sock, peer = _connected(listener, blocking=False)
    with peer, pytest.raises(FileNotFoundError):
        _tls_transport(sock, ssl_cafile="/nonexistent/ca.pem")
    assert sock.fileno() == -1, "the plain socket was left open"
