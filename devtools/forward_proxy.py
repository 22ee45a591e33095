"""A small HTTP forward proxy on 127.0.0.1, for the tests and the demo: ``CONNECT`` tunnels and plain HTTP.

It asks for Basic proxy authentication when given ``credentials`` (407 otherwise), and records what passed
(:attr:`ForwardProxy.passed`: the method and target of each request it let through) and what it refused
(:attr:`ForwardProxy.refused`). ``CONNECT host:port`` opens a tunnel: TLS stays end to end between the
client and the partner. An absolute-form request (``POST http://host:port/path``) is forwarded as one request
on a new connection (``Connection: close``), its answer relayed back.

    python -m devtools.forward_proxy --port 3128 [--user u --password p]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from devtools.processes import Managed

_HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@dataclass
class ProxyLog:
    """What went through the proxy: (method, target) pairs let through, and refused ones with the status."""

    passed: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ForwardProxy(Managed):
    """Start with ``start()`` (or as a context manager); ``url`` is where it listens (no credentials in it)."""

    def __init__(self, port: int = 0, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.log = ProxyLog()
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="forward-proxy", daemon=True)
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def passed(self) -> list[tuple[str, str]]:
        with self.log.lock:
            return list(self.log.passed)

    @property
    def refused(self) -> list[tuple[str, str, int]]:
        with self.log.lock:
            return list(self.log.refused)

    def start(self) -> ForwardProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self._port), self._loop
        ).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._one_request(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # a client or partner that went away: nothing to relay
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [tuple(line.split(":", 1)) for line in header_lines if ":" in line]
        found = {name.strip().lower(): value.strip() for name, value in headers}
        if not self._authorized(found.get("proxy-authorization", "")):
            with self.log.lock:
                self.log.refused.append((method, target, 407))
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        with self.log.lock:
            self.log.passed.append((method, target))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay_both(reader, writer, upstream_reader, upstream_writer)
            return
        parts = urlsplit(target)
        body = await reader.readexactly(int(found.get("content-length", "0")))
        upstream_reader, upstream_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = "".join(f"{n.strip()}: {v.strip()}\r\n" for n, v in headers if n.strip().lower() not in _HOP_BY_HOP)
        upstream_writer.write(f"{method} {path} {version}\r\n{kept}Connection: close\r\n\r\n".encode("latin-1") + body)
        await upstream_writer.drain()
        await _relay_both(reader, writer, upstream_reader, upstream_writer)

    def _authorized(self, header: str) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return header == f"Basic {expected}"


async def _relay_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_relay(reader, upstream_writer), _relay(upstream_reader, writer))
    finally:
        upstream_writer.close()


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3128)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    credentials = (args.user, args.password) if args.user and args.password else None
    proxy = ForwardProxy(args.port, credentials).start()
    print(f"proxying on {proxy.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    proxy.stop()


if __name__ == "__main__":
    main()
