"""The faults of the chaos suite, each injected while a run is under way and then healed.

Every scenario requests its run itself (inside whatever slows the run down, so that the fault lands in its
middle) and returns the run's id and the wall-clock time its fault ended, from which the harness measures how
long deliveries took to resume. The waits named "the fault lasts" are the fault itself (a broker paused for 30 s),
not synchronisation: every wait for a state goes through :meth:`ChaosPipeline.wait`, with a deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from tests.chaos.harness import ChaosPipeline, Outcome

#: How long the dispatch of a run should last while a fault is injected into it (the partner is slowed to it).
DISPATCH_SECONDS = 15.0
#: How long the extraction of a run should last while a fault is injected into it (the member store slowed).
EXTRACTION_SECONDS = 12.0
DISPATCHER_CONCURRENCY = 8
#: The catalog outage of CI's form: longer than the dispatcher's replica TTL (10 s: a dispatcher comes back counted
#: out) and its catalog cache (5 s), across four of the consumers' outage retries (0.5 s doubling: at 0.5, 1.5, 3.5
#: and 7.5 s, the next at 15.5 s). The README's 30 s (`make chaos`) also outlasts the scheduler's 15 s lease.
CI_CATALOG_OUTAGE_SECONDS = 12.0


@dataclass(frozen=True)
class Scenario:
    name: str
    #: Requests a run, injects the fault into it and heals it; returns the run and when the fault ended.
    inject: Callable[[ChaosPipeline], tuple[uuid.UUID, float]]
    #: Part of the bounded selection CI runs every time.
    in_ci: bool = False
    #: The shorter form CI runs in its place, for a fault whose length is a parameter rather than the promise.
    ci_form: Scenario | None = None


def ci_scenarios() -> list[Scenario]:
    """The bounded selection CI runs (tests/chaos): the faults marked ``in_ci``, each in its CI form if it has one."""
    return [scenario.ci_form or scenario for scenario in SCENARIOS if scenario.in_ci]


def run_scenario(pipeline: ChaosPipeline, scenario: Scenario) -> Outcome:
    """Request a run, inject the scenario's fault, and check the run's outcome."""
    started = time.monotonic()
    run_id, healed = scenario.inject(pipeline)
    return pipeline.outcome(scenario.name, run_id, started=started, healed=healed)


# --- slowing a run down so that a fault lands in the middle of it ----------------------------------------------


@contextmanager
def slow_partner(pipeline: ChaosPipeline) -> Iterator[None]:
    """The partner answers late enough for the dispatch to last about :data:`DISPATCH_SECONDS`."""
    requests = max(1, pipeline.members // pipeline.batch_size)
    latency_ms = int(DISPATCH_SECONDS * 1000 * DISPATCHER_CONCURRENCY / requests)
    pipeline.toxiproxy.add_toxic("partner", "slow", "latency", {"latency": latency_ms}, stream="downstream")
    try:
        yield
    finally:
        pipeline.toxiproxy.remove_toxic("partner", "slow")


@contextmanager
def slow_store(pipeline: ChaosPipeline) -> Iterator[None]:
    """The member store sends so slowly that extraction lasts about :data:`EXTRACTION_SECONDS` (~100 bytes a
    member on the wire)."""
    rate_kb = max(1, int(pipeline.members * 100 / 1024 / EXTRACTION_SECONDS))
    pipeline.toxiproxy.add_toxic("store", "slow", "bandwidth", {"rate": rate_kb}, stream="downstream")
    try:
        yield
    finally:
        pipeline.toxiproxy.remove_toxic("store", "slow")


def mid_dispatch(pipeline: ChaosPipeline, share: float = 0.3) -> None:
    """Wait until the partner has a ``share`` of the run's members."""
    target = int(pipeline.members * share)
    pipeline.wait(lambda: pipeline.received() >= target, timeout=180, what=f"{share:.0%} of the members delivered")


def mid_extraction(pipeline: ChaosPipeline, run_id: uuid.UUID) -> None:
    """Wait until the run's first members are on their way while its extraction is still reading pages."""
    pipeline.wait(lambda: pipeline.received() > 0, timeout=180, what="the first members delivered")
    record = pipeline.run(run_id)
    if record is not None and record.extraction_complete:
        raise RuntimeError("the extraction ended before the fault: slow the member store further")


# --- the faults ------------------------------------------------------------------------------------------------


def broker_restart_mid_dispatch(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    with slow_partner(pipeline):
        run_id = pipeline.request_run()
        mid_dispatch(pipeline)
        pipeline.kafka.kill()
        pipeline.kafka.start(keep_data=True)
    return run_id, time.time()


def broker_restart_mid_extraction(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    with slow_store(pipeline):
        run_id = pipeline.request_run()
        mid_extraction(pipeline, run_id)
        pipeline.kafka.kill()
        pipeline.kafka.start(keep_data=True)
    return run_id, time.time()


def broker_paused_30s(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    with slow_partner(pipeline):
        run_id = pipeline.request_run()
        mid_dispatch(pipeline)
        pipeline.kafka.pause()
        time.sleep(30)  # the fault lasts 30 s
        pipeline.kafka.resume()
    return run_id, time.time()


def kafka_latency_and_bandwidth(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    """500 ms each way and 512 KB/s to the broker for 20 s, mid-dispatch."""
    with slow_partner(pipeline):
        run_id = pipeline.request_run()
        mid_dispatch(pipeline, share=0.1)
        pipeline.toxiproxy.add_toxic("kafka", "late-up", "latency", {"latency": 500}, stream="upstream")
        pipeline.toxiproxy.add_toxic("kafka", "late-down", "latency", {"latency": 500}, stream="downstream")
        pipeline.toxiproxy.add_toxic("kafka", "narrow", "bandwidth", {"rate": 512}, stream="downstream")
        time.sleep(20)  # the fault lasts 20 s
        for toxic in ("late-up", "late-down", "narrow"):
            pipeline.toxiproxy.remove_toxic("kafka", toxic)
    return run_id, time.time()


def partner_resets_mid_body(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    """For 15 s, a third of the connections to the partner are cut after 1,000 bytes of the request."""
    with slow_partner(pipeline):
        run_id = pipeline.request_run()
        mid_dispatch(pipeline, share=0.1)
        pipeline.toxiproxy.add_toxic("partner", "cut", "limit_data", {"bytes": 1000}, stream="upstream", toxicity=0.33)
        time.sleep(15)  # the fault lasts 15 s
        pipeline.toxiproxy.remove_toxic("partner", "cut")
    return run_id, time.time()


def catalog_restart(pipeline: ChaosPipeline, seconds: float = 30.0) -> tuple[uuid.UUID, float]:
    """The catalog's PostgreSQL stopped for ``seconds``, mid-dispatch, then started again."""
    with slow_partner(pipeline):
        run_id = pipeline.request_run()
        mid_dispatch(pipeline)
        pipeline.catalog_pg.stop()
        pipeline.watch_readiness(seconds)  # the fault lasts this long
        pipeline.catalog_pg.start()
        services = list(pipeline.probe_ports)
        pipeline.wait(lambda: all(pipeline.ready(s) for s in services), timeout=120, what="every service ready again")
    return run_id, time.time()


def store_unreachable_20s(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
    """The member store unreachable (connections refused, open ones closed) for 20 s, mid-extraction."""
    with slow_store(pipeline):
        run_id = pipeline.request_run()
        mid_extraction(pipeline, run_id)
        pipeline.toxiproxy.set_enabled("store", False)
        time.sleep(20)  # the fault lasts 20 s
        pipeline.toxiproxy.set_enabled("store", True)
    return run_id, time.time()


def sigkill(service: str) -> Callable[[ChaosPipeline], tuple[uuid.UUID, float]]:
    """SIGKILL ``service`` mid-run (the extractor mid-extraction, the others mid-dispatch) and start it again."""

    def inject(pipeline: ChaosPipeline) -> tuple[uuid.UUID, float]:
        # The slowing toxic comes off just before the kill, not after it: toxiproxy (2.5 to this day) can deadlock
        # removing a toxic while it tears down the link of a client that died, its API never answering again
        # (Shopify/toxiproxy#412, #558; CI saw it once). The kill follows within milliseconds, still mid-run.
        if service == "extractor":
            with slow_store(pipeline):
                run_id = pipeline.request_run()
                mid_extraction(pipeline, run_id)
        else:
            with slow_partner(pipeline):
                run_id = pipeline.request_run()
                mid_dispatch(pipeline)
        pipeline.kill_and_restart(service)
        return run_id, time.time()

    return inject


SCENARIOS = [
    Scenario("broker SIGKILL + restart, mid-dispatch", broker_restart_mid_dispatch, in_ci=True),
    Scenario("broker SIGKILL + restart, mid-extraction", broker_restart_mid_extraction),
    Scenario("broker paused (SIGSTOP) 30 s", broker_paused_30s),
    Scenario("Kafka +500 ms each way, 512 KB/s, 20 s", kafka_latency_and_bandwidth),
    Scenario("partner connections cut mid-body, 15 s", partner_resets_mid_body),
    Scenario(
        "catalog PostgreSQL stopped 30 s",
        catalog_restart,
        in_ci=True,
        ci_form=Scenario(
            f"catalog PostgreSQL stopped {CI_CATALOG_OUTAGE_SECONDS:.0f} s",
            partial(catalog_restart, seconds=CI_CATALOG_OUTAGE_SECONDS),
        ),
    ),
    Scenario("member store unreachable 20 s", store_unreachable_20s),
    # CI keeps the kills that interrupt members in flight (extraction, dispatch); `make chaos` kills all four.
    *(
        Scenario(f"{name} SIGKILL + restart", sigkill(name), in_ci=name in ("extractor", "dispatcher"))
        for name in ("scheduler", "extractor", "dispatcher", "notifier")
    ),
]


def table(outcomes: list[Outcome]) -> list[str]:
    """The results as a Markdown table (what `make chaos` prints and the README keeps)."""
    lines = [
        "| fault | members received | sent twice (all under their key?) | run record | emails | exited | "
        "not ready during the fault | deliveries resumed after | run took |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        resumed = "-" if o.recovery_seconds is None else f"{o.recovery_seconds:.1f} s"
        unready = "not watched" if o.unready is None else (", ".join(o.unready) or "none")
        lines.append(
            f"| {o.scenario} | {o.received:,}/{o.members:,} | {o.duplicates:,} "
            f"({'yes' if not o.duplicates_under_another_key else f'no: {o.duplicates_under_another_key}'}) | "
            f"{o.status}, {o.delivered:,} delivered, {o.failed} failed | "
            f"{o.emails} | {', '.join(o.exited) or 'none'} | {unready} | {resumed} | {o.run_seconds:.0f} s |"
        )
    return lines
