"""A lean aiohttp receiver for the HTTP benchmarks, run in its own process so its CPU is not the client's.

``POST`` anything: answers 200 ``{"accepted": true}`` after ``delay`` seconds (a slow partner), and
counts requests, bytes and the times of the first and the last one: ``GET /stats`` returns them, so
every contender's rate is measured by the same clock, on the receiving side (``GET /times``: every request's
time, to see where the sender paused). ``DELETE /stats`` resets.

    python -m tests.benchmarks.lean_receiver PORT [DELAY_SECONDS]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from devtools.processes import free_port, port_open, wait_until


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        #: Every request's time (``GET /times``): where the sender paused.
        self.times: list[float] = []

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes": self.bytes, "first": self.first, "last": self.last}


def application(delay: float) -> web.Application:
    stats = Stats()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if delay:
            await asyncio.sleep(delay)
        now = time.monotonic()
        stats.first = stats.first or now
        stats.last = now
        stats.requests += 1
        stats.times.append(now)
        stats.bytes += len(body)
        return web.json_response({"accepted": True})

    async def read_stats(_: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    async def read_times(_: web.Request) -> web.Response:
        return web.json_response(stats.times)

    async def reset_stats(_: web.Request) -> web.Response:
        stats.reset()
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/stats", read_stats)
    app.router.add_get("/times", read_times)
    app.router.add_delete("/stats", reset_stats)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


@contextmanager
def lean_receiver(delay: float = 0.0) -> Iterator[str]:
    """Start the receiver in a child process; yields its base URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.lean_receiver", str(port), str(delay)])
    try:
        wait_until(lambda: port_open(port), timeout=30, what="the lean receiver")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    web.run_app(
        application(float(sys.argv[2]) if len(sys.argv) > 2 else 0.0),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )
