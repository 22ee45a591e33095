"""The dispatcher's CPU per one-member request, in process, beside a plain aiohttp loop (issue 18).

The :class:`~services.dispatcher.dispatching.Dispatcher` (no Kafka: a catalog in memory) delivers rounds of 4
records of 64 members each, with a one-member ``json_body`` template (the end-to-end benchmark's), to the lean
receiver (its own process, 127.0.0.1) at concurrency 8, as the service's event loop does; the plain loop posts
the same number of bodies with aiohttp at the same concurrency. The two take turns ``--rounds`` times, and the
process's CPU seconds (``time.process_time``: the receiver's are its own) are divided by the requests. The
garbage collector's full collections during the dispatcher's turns are timed too (the service freezes its
start-up objects out of their reach: ``--no-freeze`` shows the cost without).

    .venv/bin/python -m tests.benchmarks.bench_dispatcher_cpu [--requests 10240] [--rounds 3] [--no-freeze]
        [--loops asyncio uvloop] [--partner http|memory] [--client aiohttp reqwest] [--auth none|query-key|header-key]

``--loops`` names the event loops each turn runs both contenders on (asyncio's default loop, uvloop's), in turn
in the same sitting; the ratio is taken on the same loop. ``--client`` names the dispatcher's partner HTTP clients
(``EXPORT_DISPATCHER_HTTP_CLIENT``) each turn runs, one after the other, beside the same plain loop. ``--auth`` gives
the profile an API key (an ``env:`` reference, as a deployment holds it) sent in the query (``in: query``) or in a
header, instead of no authentication.

Figures only: nothing here passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
import uuid
from collections.abc import Coroutine, Hashable, Iterator
from typing import Any, TypeVar

import orjson
import uvloop

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.destinations import DestinationPolicy
from shared.events import MemberBatch
from shared.outbound.partner_http import AiohttpPartnerHttp, PartnerAnswer
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp
from shared.runtime import freeze_startup_objects
from shared.topics import Topics
from tests.benchmarks.common import plain_aiohttp
from tests.benchmarks.lean_receiver import lean_receiver

BODY_COLUMNS = ("id", "email", "first_name", "tier", "points")
RECORD_MEMBERS = 64
RECORDS_PER_ROUND = 4
CONCURRENCY = 8
T = TypeVar("T")
#: The environment variable the ``--auth`` keys reference (set by :func:`main`).
KEY_VARIABLE = "PARTNER_BENCH_KEY"
AUTHS: dict[str, dict[str, str]] = {
    "none": {"type": "none"},
    "query-key": {"type": "api_key", "in": "query", "name": "appid", "key": f"env:{KEY_VARIABLE}"},
    "header-key": {"type": "api_key", "key": f"env:{KEY_VARIABLE}"},
}


class MemoryCatalog:
    """The template and profile the dispatcher reads (no run is ever cancelled)."""

    def __init__(self, base_url: str, auth: str = "none") -> None:
        template = HttpTemplate(
            name="t",
            query="q",
            profile="p",
            method="POST",
            path="/members",
            batch_size=1,
            json_body={column: f"{{{{ member.{column} }}}}" for column in BODY_COLUMNS},
        )
        self.objects: dict[Hashable, CatalogObject] = {
            ("HttpTemplate", "t"): template,
            ("ConnectionProfile", "p"): ConnectionProfile.model_validate(
                {"name": "p", "base_url": base_url, "auth": AUTHS[auth]}
            ),
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind.__name__, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


def member(number: int) -> dict[str, Any]:
    return {
        "id": number,
        "email": f"m{number}@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "tier": "gold",
        "points": number % 1000,
        "locale": "en",
        "consent_email": True,
    }


def rounds(requests: int) -> Iterator[list[MemberBatch]]:
    """Rounds of records of one-member requests, ``requests`` in all (rounded up to whole rounds)."""
    run_id = uuid.uuid4()
    per_round = RECORD_MEMBERS * RECORDS_PER_ROUND
    for start in range(0, requests, per_round):
        yield [
            MemberBatch(
                run_id=run_id,
                definition="d",
                template="t",
                batch_index=first,
                members=[member(first + k) for k in range(RECORD_MEMBERS)],
                key_column="id",
            )
            for first in range(start, start + per_round, RECORD_MEMBERS)
        ]


class FullCollections:
    """Times the garbage collector's full (generation 2) collections while installed."""

    def __init__(self) -> None:
        self.seconds, self.count, self._began = 0.0, 0, 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.count += 1


class MemoryPartner:
    """A partner answering 200 at once, in memory (``--partner memory``): the dispatcher's own CPU, no HTTP."""

    ANSWER = PartnerAnswer(200, None, b"")

    async def send(self, request: object, timeout: float, network: object = None) -> PartnerAnswer:
        await asyncio.sleep(0)  # the event loop turns once, as it would for a reply
        return self.ANSWER

    async def aclose(self) -> None:
        return None


async def dispatcher_turn(
    base_url: str, requests: int, partner: str = "http", client: str = "aiohttp", auth: str = "none"
) -> tuple[float, float, FullCollections]:
    """CPU microseconds a request and requests/s of the dispatcher delivering ``requests`` requests, to the lean
    receiver over HTTP (on the partner HTTP client ``client``) or to a partner in memory."""
    partners: AiohttpPartnerHttp | ReqwestPartnerHttp | MemoryPartner = MemoryPartner()
    if partner == "http":
        http = ReqwestPartnerHttp if client == "reqwest" else AiohttpPartnerHttp
        partners = http(DestinationPolicy.parse("127.0.0.1"), max_connections=100)
    catalog = MemoryCatalog(base_url, auth)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partners, RetryBudget()),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=CONCURRENCY,
    )
    work = list(rounds(requests))
    await dispatcher.handle_all(work[0])  # warm: sessions open, template compiled
    collections = FullCollections()
    gc.callbacks.append(collections)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for batches in work:
            for result in await dispatcher.handle_all(batches):
                if isinstance(result, BaseException):
                    raise result
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        gc.callbacks.remove(collections)
        await partners.aclose()
        dispatcher.renderer.close()
    sent = len(work) * RECORD_MEMBERS * RECORDS_PER_ROUND
    return cpu / sent * 1e6, sent / wall, collections


async def plain_turn(base_url: str, requests: int) -> tuple[float, float]:
    """CPU microseconds a request and requests/s of a plain aiohttp loop posting ``requests`` bodies."""
    bodies = [orjson.dumps({column: member(n)[column] for column in BODY_COLUMNS}) for n in range(requests)]
    cpu, wall = time.process_time(), time.perf_counter()
    await plain_aiohttp(f"{base_url}/members", bodies, CONCURRENCY)
    return (time.process_time() - cpu) / requests * 1e6, requests / (time.perf_counter() - wall)


def run_on(loop: str, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a new event loop of the kind ``loop`` names."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-freeze", action="store_true", help="leave start-up objects to the collector")
    parser.add_argument("--loops", nargs="+", choices=("asyncio", "uvloop"), default=["asyncio"])
    parser.add_argument(
        "--partner",
        choices=("http", "memory"),
        default="http",
        help="the lean receiver over HTTP (beside a plain aiohttp loop), or a partner in memory: the dispatcher's "
        "own CPU a request, without the HTTP client's (no plain loop then)",
    )
    parser.add_argument(
        "--client",
        nargs="+",
        choices=("aiohttp", "reqwest"),
        default=["aiohttp"],
        help="the dispatcher's partner HTTP clients, each in every turn (EXPORT_DISPATCHER_HTTP_CLIENT)",
    )
    parser.add_argument("--auth", choices=tuple(AUTHS), default="none", help="the profile's authentication")
    args = parser.parse_args()
    os.environ[KEY_VARIABLE] = "bench-key/0123456789+abcdef"
    if not args.no_freeze:
        freeze_startup_objects()  # as the service does
    ratios: dict[str, list[float]] = {f"{loop}, {client}": [] for loop in args.loops for client in args.client}
    plain_of: dict[str, list[float]] = {loop: [] for loop in args.loops}
    with lean_receiver() as base_url:
        for turn in range(1, args.rounds + 1):
            for loop in args.loops:
                if args.partner == "memory":
                    cpu, rate, full = run_on(loop, dispatcher_turn(base_url, args.requests, "memory", auth=args.auth))
                    print(
                        f"turn {turn}, {loop}: the dispatcher's own work {cpu:.1f} us CPU a request (partner in memory)"
                    )
                    plain_of[loop].append(cpu)
                    continue
                plain_cpu, plain_rate = run_on(loop, plain_turn(base_url, args.requests))
                plain_of[loop].append(plain_cpu)
                for client in args.client:
                    cpu, rate, full = run_on(
                        loop, dispatcher_turn(base_url, args.requests, client=client, auth=args.auth)
                    )
                    ratios[f"{loop}, {client}"].append(cpu / plain_cpu)
                    print(
                        f"turn {turn}, {loop}, {client}: dispatcher {cpu:.0f} us CPU a request ({rate:,.0f} "
                        f"requests/s; {full.count} full collections, {full.seconds * 1000:.0f} ms), plain aiohttp "
                        f"{plain_cpu:.0f} us ({plain_rate:,.0f} requests/s): {cpu / plain_cpu:.2f}x"
                    )
    for loop in args.loops:
        if args.partner == "memory":
            print(f"median on {loop}: the dispatcher's own work {statistics.median(plain_of[loop]):.1f} us a request")
            continue
        for client in args.client:
            print(
                f"median on {loop}, {client}: the dispatcher's CPU a request is "
                f"{statistics.median(ratios[f'{loop}, {client}']):.2f}x the plain loop's (plain loop "
                f"{statistics.median(plain_of[loop]):.0f} us a request)"
            )


if __name__ == "__main__":
    main()
