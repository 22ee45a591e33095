"""Liveness and readiness of a service, served beside /metrics: ``/livez`` and ``/readyz``.

Live: the service's main loop has come round within ``stall_seconds`` (a wedged loop is restarted; the bound
is the consumer's ``max.poll.interval``, past which Kafka gives its partitions away anyway). Ready: live,
in its consumer group (a heartbeat to the group coordinator within the session timeout: the broker reached,
the group joined), and not waiting out a dependency (the broker, the catalog, the member store): a service
riding out an outage says so without being restarted, and says ready again once the dependency answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

#: The condition an interrupted loop sets (a dependency away) and clears (it answers again).
DEPENDENCY = "dependency"
#: The condition a consumer sets while it is not in its group (not joined yet, or the broker unreachable).
GROUP = "group"


class Health:
    """What the probes read; the service's loop calls :meth:`beat` each time round, and sets and clears
    named conditions that make it not ready (:meth:`waiting` / :meth:`recovered`)."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.clock = clock
        self._last_beat = clock()
        self._conditions: dict[str, str] = {}

    def beat(self) -> None:
        """The loop came round."""
        self._last_beat = self.clock()

    def waiting(self, reason: str, condition: str = DEPENDENCY) -> None:
        """Not ready while ``condition`` holds (``reason`` says why, without secrets)."""
        self._conditions[condition] = reason
        self.beat()

    def recovered(self, condition: str = DEPENDENCY) -> None:
        """``condition`` no longer holds."""
        self._conditions.pop(condition, None)
        self.beat()

    def live(self) -> tuple[bool, str]:
        stalled = self.clock() - self._last_beat
        if stalled > self.stall_seconds:
            return False, f"the main loop has not come round for {stalled:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, reason = self.live()
        if not live:
            return False, reason
        if DEPENDENCY in self._conditions:
            return False, f"waiting out a dependency: {self._conditions[DEPENDENCY]}"
        if self._conditions:
            return False, "; ".join(self._conditions.values())
        return True, "ok"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread a request: a slow scrape never holds a probe up."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass


def serve_health_and_metrics(port: int, health: Health) -> WSGIServer:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` on ``port`` (all interfaces, for the kubelet and the
    scraper) from a daemon thread; the probes answer 200 or 503 with the reason as text, any other path 404."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok, reason = health.live() if path == "/livez" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [reason.encode() + b"\n"]
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        # Anything else is not here: a probe configured with a wrong path must fail, not read metrics as "ok".
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: the paths are /metrics, /livez and /readyz\n"]

    server = make_server("0.0.0.0", port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)  # noqa: S104 - probed from outside the pod
    threading.Thread(target=server.serve_forever, name="health-and-metrics", daemon=True).start()
    return server
