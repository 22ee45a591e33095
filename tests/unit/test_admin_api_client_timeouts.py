"""exportctl's admin API client when the server does not answer in time, or drops the connection after the request was
sent: a POST (a run, a replay) may be recorded all the same, so its outcome is said unknown with how to check, not
"unreachable"; a read is unreachable. Exit 5 both."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from shared.cli.api import AdminApi, ApiError
from shared.cli.exits import UNREACHABLE


def _server(drop: bool) -> Iterator[str]:
    """A server that reads each request, then answers nothing until the test ends, or closes the connection when
    ``drop``."""
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
            if drop:
                connection.close()
            else:
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


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that reads each request and answers nothing until the test ends."""
    yield from _server(drop=False)


@pytest.fixture
def dropping_server() -> Iterator[str]:
    """A server that reads each request and closes the connection without an answer."""
    yield from _server(drop=True)


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


def test_a_post_dropped_after_it_was_sent_has_an_unknown_outcome(dropping_server: str) -> None:
    api = AdminApi(dropping_server, "token", timeout=5)
    with pytest.raises(ApiError) as refused:
        api.call("POST", "/runs", json_body={"definition": "weekly"})
    assert refused.value.code == UNREACHABLE
    message = str(refused.value)
    assert message.startswith(f"the admin API at {dropping_server} dropped the connection after POST /runs was sent (")
    assert message.endswith(
        "its outcome is unknown (the server may have recorded it): check before trying again (a run or a replay: "
        "`exportctl runs`, or retry with the same --idempotency-key)"
    )


def test_a_read_dropped_after_it_was_sent_is_unreachable(dropping_server: str) -> None:
    api = AdminApi(dropping_server, "token", timeout=5)
    with pytest.raises(ApiError) as refused:
        api.call("GET", "/runs")
    assert refused.value.code == UNREACHABLE
    assert str(refused.value).startswith(f"the admin API at {dropping_server} is unreachable (")
