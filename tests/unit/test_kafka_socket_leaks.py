"""kafka-python leaves no socket to the garbage collector: failed connects and closed clients close theirs
(shared.kafka.socket_leaks)."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from kafka.net.inet import KafkaNetSocket
from kafka.net.selector import NetworkSelector

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
    deadline = time.monotonic() + 5
    while connection not in [key.fileobj for key in list(net._selector.get_map().values())]:
        assert time.monotonic() < deadline, "the network thread never watched the connection"
        time.sleep(0.01)
    io_thread = net._io_thread
    net.close()
    assert io_thread is not None
    assert not io_thread.is_alive()
    assert connection.fileno() == -1
