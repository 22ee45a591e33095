"""Saying at once that Kafka cannot be reached, rather than after the client's own long retries."""

from __future__ import annotations

import socket

from shared.cli.exits import UNREACHABLE, CliError

#: How long exportctl tries each bootstrap server before saying Kafka is unreachable.
CONNECT_TIMEOUT_SECONDS = 3.0


def require_kafka(bootstrap_servers: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Return if one of the bootstrap servers accepts a TCP connection; :class:`CliError` (unreachable) if none.

    kafka-python retries an absent broker for about 30 s before it fails; a connection attempt with a
    short timeout answers the common case (no broker there) in at most ``timeout`` per server.
    """
    reasons = []
    for server in (s.strip() for s in bootstrap_servers.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or server, int(port or 9092)), timeout=timeout):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
    raise CliError(
        f"Kafka is unreachable ({'; '.join(reasons) or 'no bootstrap server'}): check EXPORT_KAFKA_BOOTSTRAP_SERVERS",
        UNREACHABLE,
    )
