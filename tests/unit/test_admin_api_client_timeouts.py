"""exportctl's admin API client when the server does not answer in time: a POST (a run, a replay) may be recorded all
the same, so its outcome is said unknown with how to check, not "unreachable"; a read is unreachable. Exit 5 both."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from shared.cli.api import AdminApi, ApiError
from shared.cli.exits import UNREACHABLE


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that reads each request and answers nothing until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.recv(65536)  # the request, received: a write may be recorded from here on
            accepted.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_post_not_answered_in_time_has_an_unknown_outcome_and_says_how_to_check(silent_server: str) -> None:
    api = AdminApi(silent_server, "token", timeout=0.5)
    with pytest.raises(ApiError) as refused:
        api.call("POST", "/runs/86095c5e-170c-4b14-bef7-3eb7c9314c5e/replay")
    assert refused.value.code == UNREACHABLE
    assert str(refused.value) == (
        f"the admin API at {silent_server} did not answer POST /runs/86095c5e-170c-4b14-bef7-3eb7c9314c5e/replay "
        "within 0.5 s: its outcome is unknown (the server may have recorded it): check before trying again (a run or "
        "a replay: `exportctl runs`, or retry with the same --idempotency-key)"
    )


def test_a_read_not_answered_in_time_is_unreachable(silent_server: str) -> None:
    api = AdminApi(silent_server, "token", timeout=0.5)
    with pytest.raises(ApiError) as refused:
        api.call("GET", "/dead-letters")
    assert (refused.value.code, str(refused.value)) == (
        UNREACHABLE,
        f"the admin API at {silent_server} is unreachable (timed out)",
    )
