"""What holding a profile's max_in_flight across dispatcher replicas costs per request, on PostgreSQL.

Same run, same machine:

- **per replica** (the baseline, before issue 17): a local semaphore and token bucket per request;
- **quota division** (chosen): the same local bound at this replica's share (:mod:`services.dispatcher.fleet_limits`),
  plus one heartbeat in the catalog every ``EXPORT_DISPATCHER_HEARTBEAT_SECONDS`` whatever the traffic: its cost
  is shown per heartbeat and spread over the requests of one heartbeat at a reference rate;
- **a lease per request** (candidate b): take a free slot row of the profile in the catalog (``FOR UPDATE SKIP
  LOCKED``) before the request and give it back after: two short transactions per request.

Kafka partitioning by profile (candidate a) costs nothing per request but leaves one replica per profile,
whatever the traffic: no figure here, its cost is the throughput it gives up.

    python -m tests.benchmarks.bench_fleet_limits [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from contextlib import ExitStack
from typing import Any

from sqlalchemy import text

from services.dispatcher.fleet_limits import FleetLimits
from services.dispatcher.rate_limit import AdaptiveRateLimiter
from shared.catalog import CatalogStores
from shared.catalog.fleet_store import SqlFleetStore
from shared.domain.catalog_objects import RateLimit
from tests.benchmarks.common import postgres_databases

LIMIT = RateLimit(max_in_flight=4, requests_per_second=100_000, burst=10_000)
HEARTBEAT_SECONDS = 2.0
#: Requests a second of one replica to spread a heartbeat over (the dispatcher's measured one-member rate).
REFERENCE_RATE = 2_254


async def per_replica(requests: int) -> float:
    """Seconds per request of the baseline's local bound."""
    semaphore = asyncio.BoundedSemaphore(LIMIT.max_in_flight or 1)
    limiter = AdaptiveRateLimiter(LIMIT.requests_per_second or 1.0, float(LIMIT.burst))
    started = time.perf_counter()
    for _ in range(requests):
        limiter.reserve(time.monotonic())
        async with semaphore:
            pass
    return (time.perf_counter() - started) / requests


async def quota_division(fleet: FleetLimits, requests: int) -> float:
    """Seconds per request of the chosen bound, between heartbeats."""
    await fleet.beat()
    started = time.perf_counter()
    for _ in range(requests):
        limits = fleet.limits_of("partner", LIMIT)
        limits.rate.reserve(time.monotonic())
        async with limits.in_flight(lambda: fleet.held("partner")):
            pass
    return (time.perf_counter() - started) / requests


async def heartbeats(fleet: FleetLimits, count: int) -> float:
    """Seconds per heartbeat (a catalog round trip and its transaction)."""
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        await fleet.beat()
        durations.append(time.perf_counter() - started)
    return statistics.mean(durations)


def leases(catalog: CatalogStores, requests: int) -> float:
    """Seconds per request of a lease per request: take a free slot, give it back."""
    engine = catalog.database.engine
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE bench_slots (profile text, slot int, holder text, PRIMARY KEY (profile, slot))")
        )
        for slot in range(LIMIT.max_in_flight or 1):
            connection.execute(text("INSERT INTO bench_slots VALUES ('partner', :s, NULL)"), {"s": slot})
    take = text(
        "UPDATE bench_slots SET holder = :me WHERE (profile, slot) = (SELECT profile, slot FROM bench_slots "
        "WHERE profile = 'partner' AND holder IS NULL LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING slot"
    )
    give = text("UPDATE bench_slots SET holder = NULL WHERE profile = 'partner' AND slot = :slot")
    started = time.perf_counter()
    for _ in range(requests):
        with engine.begin() as connection:
            slot = connection.execute(take, {"me": "replica-1"}).scalar_one()
        with engine.begin() as connection:
            connection.execute(give, {"slot": slot})
    return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5_000)
    args = parser.parse_args()
    with ExitStack() as stack:
        catalog = CatalogStores.from_url(postgres_databases(stack)(f"b{uuid.uuid4().hex[:8]}"), migrate=True)
        try:
            fleet = FleetLimits(SqlFleetStore(catalog.database), heartbeat_seconds=HEARTBEAT_SECONDS)
            baseline = asyncio.run(per_replica(args.requests))
            chosen = asyncio.run(quota_division(fleet, args.requests))
            beat = asyncio.run(heartbeats(fleet, 200))
            lease = leases(catalog, max(200, args.requests // 5))
        finally:
            catalog.close()
    spread = beat / (HEARTBEAT_SECONDS * REFERENCE_RATE)
    report: list[tuple[str, Any]] = [
        ("per replica (baseline)", f"{baseline * 1e6:8.2f} us/request"),
        ("quota division, local part", f"{chosen * 1e6:8.2f} us/request   {chosen / baseline:6.1f}x baseline"),
        ("quota division, heartbeat", f"{beat * 1e3:8.2f} ms/heartbeat, every {HEARTBEAT_SECONDS:.0f} s"),
        (
            f"  spread over {REFERENCE_RATE} req/s",
            f"{spread * 1e6:8.2f} us/request   total {(chosen + spread) / baseline:6.1f}x baseline",
        ),
        ("lease per request (b)", f"{lease * 1e6:8.2f} us/request   {lease / baseline:6.0f}x baseline"),
        ("lease vs quota division", f"{lease / (chosen + spread):8.0f}x"),
    ]
    print(f"max_in_flight across replicas, PostgreSQL catalog, {args.requests} requests")
    for label, figure in report:
        print(f"  {label:<30} {figure}")


if __name__ == "__main__":
    main()
