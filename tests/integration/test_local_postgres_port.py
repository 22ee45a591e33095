"""A local PostgreSQL whose port was taken between picking it and starting (another process's outgoing connection
takes ports of the ephemeral range) starts on another, and one that cannot start says why: a CI run's chaos pipeline
failed at set-up with only `pg_ctl ... start returned 1`, its log removed with its directory."""

from __future__ import annotations

import socket

import pytest

from devtools.postgres import LocalPostgres

pytestmark = pytest.mark.integration


def test_a_local_postgresql_whose_port_was_taken_meanwhile_starts_on_another():
    server = LocalPostgres()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        with server:
            assert server.port != taken.getsockname()[1]
            assert server.create_database("scratch").endswith(f":{server.port}/scratch")


def test_a_local_postgresql_on_a_port_given_and_taken_says_why_it_did_not_start():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        reason = f"(?s)did not start on 127.0.0.1:{port}: .*Address already in use"
        with pytest.raises(RuntimeError, match=reason), LocalPostgres(port=port):
            pass
