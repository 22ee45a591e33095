"""The local test receiver behaves like a real partner server where the tests rely on it."""

import socket

import httpx
import pytest

from devtools.http_receiver import HttpReceiver

pytestmark = pytest.mark.integration


def test_a_request_whose_sender_dies_mid_body_is_not_recorded() -> None:
    with HttpReceiver() as receiver:
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
            sock.sendall(
                b"POST /members HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n[{"id": 1'
            )
            sock.shutdown(socket.SHUT_WR)
            # The server closes its side once it has given up on the request: a sync point.
            assert sock.recv(1024) == b""
        response = httpx.post(f"{receiver.url}/members", json=[{"id": 2}])
        assert response.status_code == 200
        assert [receipt.body for receipt in receiver.receipts()] == [[{"id": 2}]]
