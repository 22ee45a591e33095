"""Helpers shared by the local infrastructure: free ports, waiting on a condition with a deadline."""

from __future__ import annotations

import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: How often a test's threaded server looks whether it was asked to stop. ``shutdown()`` waits for that look:
#: socketserver's default, 0.5 s, was paid (0.25 s on average, 0.5 s right after a request) by each stop of the
#: hundreds of receivers the suite starts.
SERVER_STOP_POLL_SECONDS = 0.01


def serving_thread(server: socketserver.BaseServer, name: str | None = None) -> threading.Thread:
    """A daemon thread (not started) serving ``server`` until ``server.shutdown()``, which then returns at once."""
    return threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SERVER_STOP_POLL_SECONDS}, name=name, daemon=True
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Managed:
    """A local server started by ``start()`` and stopped by ``stop()``; usable as a context manager, which also
    removes the temporary directory the server made for itself (``temporary_dir``: its data, its log): a test
    session's PostgreSQL left 2.5-3 GB behind each run, and a machine running the suite again and again filled up."""

    #: The directory the server created for itself (none given), removed when the context manager is left.
    temporary_dir: Path | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server, then remove the temporary directory it made for itself (one it was given is kept).
        What a composite of servers calls for each of its parts, as the context manager does for one."""
        try:
            self.stop()
        finally:
            if self.temporary_dir is not None:
                shutil.rmtree(self.temporary_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
