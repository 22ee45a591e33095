"""The tests' HTTP receiver stops at once: its stop is in the teardown of hundreds of tests."""

from __future__ import annotations

import time

import httpx

from devtools.http_receiver import HttpReceiver
from devtools.processes import port_open

#: Well under socketserver's default poll (0.5 s), which a stop right after a request waited out in full.
STOP_BOUND = 0.25


def test_a_receiver_stops_at_once_right_after_a_request_and_no_longer_listens():
    for _ in range(3):
        receiver = HttpReceiver().start()
        assert httpx.post(f"{receiver.url}/hooks", json=[{"id": 1}]).status_code == 200
        started = time.monotonic()
        receiver.stop()
        took = time.monotonic() - started
        assert took < STOP_BOUND, f"the stop took {took:.3f}s"
        assert not port_open(receiver.port)
        assert [receipt.members for receipt in receiver.receipts()] == [[{"id": 1}]]
