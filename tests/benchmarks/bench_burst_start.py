"""How fast one extractor starts a burst of small runs due at the same instant (issue 18), Kafka included.

``--runs`` run requests, each reading three members, are published ahead of one instant (``scheduled_for``, as the
scheduler's lookahead does) to one extractor process; the extractor holds them until the instant, then starts them.
A run's start is its ``run.started`` event (its ``at``: the extractor stamps it once it has claimed the run). Printed
per turn: runs started a second (first start to last), and the start delay after the instant, p50 / p99 / max.

The variants take turns in the same run, each with an extractor process and topics of its own, on the same broker,
SQLite catalog and member store: the extractor as it is with each of ``--rounds`` (``EXPORT_EXTRACTOR_START_ROUND``;
1 is one request a round), and, with ``--before DIR ...``, the baselines: the extractor from copies of the code
before (``git archive <commit> services shared | tar -x -C DIR``), each run with ``PYTHONPATH=DIR``.
The requests are manual runs with a ``scheduled_for`` (held the same way as scheduled ones, without the scheduled
run's judgement at its start: one catalog read more a run, see ``bench_run_start``), so that a turn need not wait
for a whole minute.

    .venv/bin/python -m tests.benchmarks.bench_burst_start [--runs 1000] [--turns 2] [--rounds 1 32] [--before DIR ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from devtools.kafka_broker import LocalKafka
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, RunRequested, RunStarted, Trigger, utc_now
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.log import configure_logging
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.benchmarks.scheduler_starts import percentile, start_figures
from tests.extractor_replicas import ExtractorReplicas
from tests.kafka_helpers import read_until, service_env

#: How long before the instant publishing starts, plus per run (publishing and holding them all takes ~0.3 ms a run).
LEAD_SECONDS = 3.0
LEAD_PER_RUN_SECONDS = 0.002
WRITE_CHUNK = 500


class Setup:
    """The broker, catalog (with ``runs`` definitions) and member store every turn shares."""

    def __init__(self, bootstrap: str, workdir: Path, runs: int) -> None:
        self.bootstrap, self.workdir = bootstrap, workdir
        self.store_url = f"sqlite:///{workdir / 'members.db'}"
        engine = make_engine(self.store_url)
        create_demo_members(engine, 20)
        engine.dispose()
        self.catalog_url = f"sqlite:///{workdir / 'catalog.db'}"
        catalog = CatalogStores.from_url(self.catalog_url, migrate=True)
        catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
        catalog.definitions.apply(SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 3"))
        catalog.definitions.apply(HttpTemplate(name="t", query="few", profile="p", batch_size=100))
        self.names = [f"burst-{i:05d}" for i in range(runs)]
        written = [ExportDefinition.model_validate({"name": n, "query": "few", "template": "t"}) for n in self.names]
        for start in range(0, len(written), WRITE_CHUNK):
            catalog.definitions.apply_all(list(written[start : start + WRITE_CHUNK]))
        catalog.close()

    def turn(self, label: str, env: dict[str, str]) -> tuple[float, list[float]]:
        """One burst with an extractor of its own: (runs started a second, start delays after the instant)."""
        prefix = f"burst{uuid.uuid4().hex[:6]}."
        settings = CommonSettings(kafka_bootstrap_servers=self.bootstrap, topic_prefix=prefix, topic_partitions=6)
        ensure_topics(settings)
        extractor_env = service_env(self.bootstrap, prefix, self.catalog_url, self.store_url) | {
            "EXPORT_TOPIC_PARTITIONS": "6",
            "EXPORT_LOG_LEVEL": "WARNING",
            **env,
        }
        logs = self.workdir / f"logs-{prefix}"
        extractors = ExtractorReplicas(extractor_env, 1, logs).start()
        producer = make_producer(settings, "bench")
        topic = settings.topics.run_requests
        try:
            extractors.wait_joined(self.bootstrap, prefix)
            warm = RunRequested(definition=self.names[0])
            produce_and_wait(producer, [Outgoing(topic, str(warm.run_id), warm.to_bytes())])
            self._starts(settings, {warm.run_id})
            now = utc_now()
            instant = now + dt.timedelta(seconds=LEAD_SECONDS + LEAD_PER_RUN_SECONDS * len(self.names))
            requests = [
                RunRequested(
                    definition=name,
                    trigger=Trigger.MANUAL,
                    requested_by="bench",
                    requested_at=now,
                    scheduled_for=instant,
                )
                for name in self.names
            ]
            produce_and_wait(producer, [Outgoing(topic, str(r.run_id), r.to_bytes()) for r in requests])
            published = (utc_now() - instant).total_seconds()
            starts = self._starts(settings, {r.run_id for r in requests})
        finally:
            producer.close()
            extractors.stop()
        delays, rate = start_figures(instant, starts)
        print(
            f"  [{label}] {len(starts)} runs: {rate:.1f} runs started a second; start delay after the instant "
            f"p50 {percentile(delays, 0.5):.2f} s, p99 {percentile(delays, 0.99):.2f} s, max {max(delays):.2f} s, "
            f"first {min(delays):+.3f} s (last request acknowledged at the instant {published:+.2f} s)",
            flush=True,
        )
        return rate, delays

    def _starts(self, settings: CommonSettings, run_ids: set[uuid.UUID], timeout: float = 900) -> list[RunStarted]:
        """The first start of each of ``run_ids``, once every one has started."""
        firsts: dict[uuid.UUID, RunStarted] = {}
        seen = 0

        def done(values: list[bytes]) -> bool:
            nonlocal seen
            for value in values[seen:]:
                if b'"run.started"' in value:
                    event = RUN_EVENT_ADAPTER.validate_json(value)
                    if isinstance(event, RunStarted) and event.run_id in run_ids:
                        firsts.setdefault(event.run_id, event)
            seen = len(values)
            return len(firsts) >= len(run_ids)

        read_until(self.bootstrap, settings.topics.run_events, done, timeout=timeout)
        return list(firsts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="runs due at the instant, a turn")
    parser.add_argument("--turns", type=int, default=2, help="turns of every variant, taking turns")
    parser.add_argument(
        "--rounds", type=int, nargs="+", default=[1, 32], help="EXPORT_EXTRACTOR_START_ROUND of each variant"
    )
    parser.add_argument(
        "--before", type=Path, nargs="*", default=[], help="copies of the code before (services/, shared/): baselines"
    )
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    here = str(Path(__file__).resolve().parents[2])
    # PYTHONSAFEPATH: the working directory is not put first on the path, PYTHONPATH says which code runs.
    variants = {
        f"start round {size}": {"EXPORT_EXTRACTOR_START_ROUND": str(size), "PYTHONPATH": here} for size in args.rounds
    }
    before = {f"code in {tree.name}": {"PYTHONPATH": str(tree.resolve())} for tree in args.before}
    variants = {**before, **variants}
    for env in variants.values():
        env["PYTHONSAFEPATH"] = "1"
    rates: dict[str, list[float]] = {v: [] for v in variants}
    delays: dict[str, list[float]] = {v: [] for v in variants}
    with ExitStack() as stack:
        kafka = stack.enter_context(LocalKafka())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        setup = Setup(kafka.bootstrap_servers, workdir, args.runs)
        print(f"{args.runs} runs of 3 members due at one instant, one extractor, SQLite catalog and store", flush=True)
        for turn in range(args.turns):
            for variant, env in variants.items():
                started = time.perf_counter()
                rate, turn_delays = setup.turn(f"turn {turn + 1}, {variant}", env)
                rates[variant].append(rate)
                delays[variant].extend(turn_delays)
                print(f"    ({time.perf_counter() - started:.0f} s with the extractor's start)", flush=True)
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for variant in variants:
        print(
            f"[{variant}] runs started a second: median {statistics.median(rates[variant]):.1f} "
            f"(turns: {', '.join(f'{r:.1f}' for r in rates[variant])}); start delay over all turns p50 "
            f"{percentile(delays[variant], 0.5):.2f} s, p99 {percentile(delays[variant], 0.99):.2f} s"
        )


if __name__ == "__main__":
    main()
