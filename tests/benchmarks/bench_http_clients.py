"""HTTP client benchmark: which client should the dispatcher use? (issue 5, encode/httpx#3215)

Sends the same N single-member JSON requests to a lean aiohttp server on 127.0.0.1 (its own process,
so the server's CPU is not the client's), with:

- httpx sync ``Client`` shared by W threads (what the dispatcher does), with and without TCP_NODELAY,
- httpx ``AsyncClient``, default transport (httpcore), C tasks, with and without TCP_NODELAY,
- httpx ``AsyncClient`` with httpx-aiohttp's ``AiohttpTransport``, C tasks,
- plain aiohttp ``ClientSession``, C tasks: the raw baseline.

Prints requests/s and the ratio to the baseline at each concurrency.

    .venv/bin/python -m tests.benchmarks.bench_http_clients [--requests 3000] [--concurrency 8 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from tests.benchmarks.lean_receiver import lean_receiver

BODY = json.dumps([{"id": 1, "email": "amelie.martin.1@example.com", "first_name": "Amélie", "tier": "gold"}]).encode()
HEADERS = {"Content-Type": "application/json"}


NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def threads(url: str, requests: int, workers: int, nodelay: bool = False) -> float:
    transport = httpx.HTTPTransport(socket_options=NODELAY if nodelay else None)
    limits = httpx.Limits(max_connections=workers)
    with httpx.Client(transport=transport, limits=limits) as client, ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: client.post(url, content=BODY, headers=HEADERS).raise_for_status(), range(requests)))
        return requests / (time.perf_counter() - started)


async def _run(requests: int, concurrency: int, send: Callable[[], Awaitable[None]]) -> float:
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            await send()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def httpx_async(url: str, requests: int, concurrency: int, transport: httpx.AsyncBaseTransport | None) -> float:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(transport=transport, limits=limits) as client:

        async def send() -> None:
            (await client.post(url, content=BODY, headers=HEADERS)).raise_for_status()

        return await _run(requests, concurrency, send)


async def raw_aiohttp(url: str, requests: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                response.raise_for_status()
                await response.read()

        return await _run(requests, concurrency, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    with lean_receiver() as base_url:
        url = f"{base_url}/members"
        for concurrency in args.concurrency:
            base = asyncio.run(raw_aiohttp(url, args.requests, concurrency))
            figures = {
                "httpx sync, threads": threads(url, args.requests, concurrency),
                "httpx sync, threads, TCP_NODELAY": threads(url, args.requests, concurrency, nodelay=True),
                "httpx async, default transport": asyncio.run(httpx_async(url, args.requests, concurrency, None)),
                "httpx async, default, TCP_NODELAY": asyncio.run(
                    httpx_async(url, args.requests, concurrency, httpx.AsyncHTTPTransport(socket_options=NODELAY))
                ),
                "httpx async, aiohttp transport": asyncio.run(
                    httpx_async(url, args.requests, concurrency, AiohttpTransport())
                ),
            }
            print(f"concurrency {concurrency}: plain aiohttp {base:,.0f} requests/s (baseline)")
            for name, rate in figures.items():
                print(f"  {name:<32} {rate:>8,.0f} requests/s  {rate / base:.2f}x")


if __name__ == "__main__":
    main()
