"""How fast the extractor starts a burst of small runs due at the same instant (issue 18), Kafka included.

``--runs`` run requests, each reading three members, are published ahead of one instant (``scheduled_for``, as the
scheduler's lookahead does) to the extractor's processes (``--extractors``: replicas in one consumer group); they
hold them until the instant, then start them. The requests are keyed by run id, as the scheduler keys them, so they
spread over the run-requests topic's partitions (``max(6, replicas)`` of them: every replica gets some).
A run's start is its ``run.started`` event (its ``at``: the extractor stamps it once it has claimed the run). Printed
per turn: runs started a second (first start to last), the start delay after the instant, p50 / p99 / max, and the
CPU used from the instant until every start was read, in cores: the extractors', this process's (reading the
starts), the broker's, the PostgreSQL server's, the rest (others: other work on the machine) and the whole machine's
(``/proc/stat``; on 2 cores, 2.0 is every core busy). Runs started together (issue 18's bulk start) carry
nearly the same ``at``: "runs started a second" (first start to last) then says little, and the summary also
gives the runs a second from the instant to the last start. With ``--extracted``, a turn also waits for every
run's ``run.extraction_completed`` and prints the time from the instant to the last (the burst extracted).

The variants take turns in the same run, each with extractor processes and topics of their own, on the same broker,
catalog (``--catalog``: SQLite, or a local PostgreSQL server; ``both``: each catalog in turn) and SQLite member
store: for each of ``--extractors`` (replicas), the extractor as it is with each of ``--rounds``
(``EXPORT_EXTRACTOR_START_ROUND``; 1 is one request a round), and, with ``--before DIR ...``, the baselines: the
extractor from copies of the code before (``git archive <commit> services shared | tar -x -C DIR``), each run with
``PYTHONPATH=DIR``. The requests are manual runs with a ``scheduled_for`` (held the same way as scheduled ones,
without the scheduled run's judgement at its start: one catalog read more a run, see ``bench_run_start``), so that a
turn need not wait for a whole minute.

    .venv/bin/python -m tests.benchmarks.bench_burst_start [--runs 1000] [--turns 2] [--rounds 1 32]
        [--extractors 1 2] [--catalog sqlite|postgresql|both] [--before DIR ...] [--extracted]
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
from devtools.postgres import LocalPostgres
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, ExtractionCompleted, RunRequested, RunStarted, Trigger, utc_now
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.log import configure_logging
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.benchmarks.common import cpu_seconds
from tests.benchmarks.scheduler_starts import percentile, start_figures
from tests.extractor_replicas import ExtractorReplicas
from tests.kafka_helpers import read_until, service_env

#: How long before the instant publishing starts, plus per run (publishing and holding them all takes ~0.3 ms a run).
LEAD_SECONDS = 3.0
LEAD_PER_RUN_SECONDS = 0.002
WRITE_CHUNK = 500
#: Partitions of a turn's topics at the least (as many as the services' default, EXPORT_TOPIC_PARTITIONS).
MIN_PARTITIONS = 6


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core (``/proc/stat``'s first line)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (a PostgreSQL server's backends)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` still running."""
    seconds = {}
    for pid in pids:
        try:
            seconds[pid] = cpu_seconds(pid)
        except (OSError, IndexError):  # gone meanwhile
            continue
    return seconds


class Turn:
    """What one turn measured."""

    def __init__(self, rate: float, delays: list[float], cpu: dict[str, float], extracted: float | None = None) -> None:
        self.rate, self.delays, self.cpu = rate, delays, cpu
        #: Seconds from the instant to the last run's extraction completed (with ``--extracted``).
        self.extracted = extracted


class Setup:
    """The broker, catalog (with ``runs`` definitions) and member store every turn shares."""

    def __init__(
        self,
        kafka: LocalKafka,
        workdir: Path,
        runs: int,
        catalog_url: str,
        postgres: LocalPostgres | None = None,
        extracted: bool = False,
    ) -> None:
        self.bootstrap, self.workdir = kafka.bootstrap_servers, workdir
        self.extracted = extracted
        #: The PostgreSQL server's main process (its backends are the catalog's CPU), None for SQLite.
        self.postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0]) if postgres else None
        self.broker_pid = kafka.process.pid if kafka.process is not None else None
        self.store_url = f"sqlite:///{workdir / 'members.db'}"
        if not (workdir / "members.db").exists():
            engine = make_engine(self.store_url)
            create_demo_members(engine, 20)
            engine.dispose()
        self.catalog_url = catalog_url
        catalog = CatalogStores.from_url(self.catalog_url, migrate=True)
        catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
        catalog.definitions.apply(SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 3"))
        catalog.definitions.apply(HttpTemplate(name="t", query="few", profile="p", batch_size=100))
        self.names = [f"burst-{i:05d}" for i in range(runs)]
        written = [ExportDefinition.model_validate({"name": n, "query": "few", "template": "t"}) for n in self.names]
        for start in range(0, len(written), WRITE_CHUNK):
            catalog.definitions.apply_all(list(written[start : start + WRITE_CHUNK]))
        catalog.close()

    def turn(self, label: str, replicas: int, env: dict[str, str]) -> Turn:
        """One burst with ``replicas`` extractor processes of its own."""
        prefix = f"burst{uuid.uuid4().hex[:6]}."
        partitions = max(MIN_PARTITIONS, replicas)  # every replica holds some of the run-requests topic
        settings = CommonSettings(
            kafka_bootstrap_servers=self.bootstrap, topic_prefix=prefix, topic_partitions=partitions
        )
        ensure_topics(settings)
        extractor_env = service_env(self.bootstrap, prefix, self.catalog_url, self.store_url) | {
            "EXPORT_TOPIC_PARTITIONS": str(partitions),
            "EXPORT_LOG_LEVEL": "WARNING",
            **env,
        }
        logs = self.workdir / f"logs-{prefix}"
        extractors = ExtractorReplicas(extractor_env, replicas, logs).start()
        producer = make_producer(settings, "bench")
        topic = settings.topics.run_requests
        try:
            extractors.wait_joined(self.bootstrap, prefix)
            # Twice as many warm-up runs as partitions, keyed by run id: every replica most likely starts one first.
            warm = [RunRequested(definition=self.names[0]) for _ in range(2 * partitions)]
            produce_and_wait(producer, [Outgoing(topic, str(w.run_id), w.to_bytes()) for w in warm])
            self._starts(settings, {w.run_id for w in warm})
            pids = {"extractors": [p.pid for p in extractors.processes], "bench": [os.getpid()]}
            if self.broker_pid is not None:
                pids["broker"] = [self.broker_pid]
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
            # CPU from the instant on: the burst's starts, not the holding before (the starts are read afterwards).
            time.sleep(max(0.0, -published))
            if self.postmaster is not None:  # its backends: the extractors' connections are open by now
                pids["postgresql"] = [self.postmaster, *children(self.postmaster)]
            cpu_before = {name: cpu_of(group) for name, group in pids.items()}
            machine_before = machine_cpu()
            starts = self._starts(settings, {r.run_id for r in requests})
            cpu_after = {name: cpu_of(group) for name, group in pids.items()}
            machine_after = machine_cpu()
            completed = self._completions(settings, {r.run_id for r in requests}) if self.extracted else None
        finally:
            producer.close()
            extractors.stop()
        cpu = {
            name: sum(seconds - cpu_before[name].get(pid, seconds) for pid, seconds in after.items())
            for name, after in cpu_after.items()
        }
        cpu["others"] = machine_after[0] - machine_before[0] - sum(cpu.values())  # other work on the machine
        cpu["machine"] = machine_after[0] - machine_before[0]
        wall = (machine_after[1] - machine_before[1]) / (os.cpu_count() or 1)
        delays, rate = start_figures(instant, starts)
        extracted = None if completed is None else (max(completed) - instant).total_seconds()
        print(
            f"  [{label}] {len(starts)} runs: {rate:.1f} runs started a second; start delay after the instant "
            f"p50 {percentile(delays, 0.5):.2f} s, p99 {percentile(delays, 0.99):.2f} s, max {max(delays):.2f} s, "
            f"first {min(delays):+.3f} s (last request acknowledged at the instant {published:+.2f} s); "
            f"CPU over the {wall:.1f} s from the instant until every start was read, in cores: "
            + ", ".join(f"{name} {seconds / wall:.2f}" for name, seconds in cpu.items())
            + f"; load average {os.getloadavg()[0]:.2f}"
            + ("" if extracted is None else f"; every run extracted {extracted:.2f} s after the instant"),
            flush=True,
        )
        return Turn(rate, delays, {name: seconds / wall for name, seconds in cpu.items()}, extracted)

    def _completions(
        self, settings: CommonSettings, run_ids: set[uuid.UUID], timeout: float = 900
    ) -> list[dt.datetime]:
        """When each of ``run_ids`` was said extracted (its first ``run.extraction_completed``), once all were."""
        firsts: dict[uuid.UUID, dt.datetime] = {}
        seen = 0

        def done(values: list[bytes]) -> bool:
            nonlocal seen
            for value in values[seen:]:
                if b'"run.extraction_completed"' in value:
                    event = RUN_EVENT_ADAPTER.validate_json(value)
                    if isinstance(event, ExtractionCompleted) and event.run_id in run_ids:
                        firsts.setdefault(event.run_id, event.at)
            seen = len(values)
            return len(firsts) >= len(run_ids)

        read_until(self.bootstrap, settings.topics.run_events, done, timeout=timeout)
        return list(firsts.values())

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
        "--extractors",
        type=int,
        nargs="+",
        default=[1],
        help="extractor replicas of each variant",
    )
    parser.add_argument("--catalog", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument(
        "--before", type=Path, nargs="*", default=[], help="copies of the code before (services/, shared/): baselines"
    )
    parser.add_argument(
        "--extracted", action="store_true", help="also wait for every run's extraction, and time it from the instant"
    )
    args = parser.parse_args()
    if min(args.extractors) < 1:
        parser.error("--extractors: 1 or more")
    configure_logging("WARNING", "console")
    here = str(Path(__file__).resolve().parents[2])
    # PYTHONSAFEPATH: the working directory is not put first on the path, PYTHONPATH says which code runs.
    codes = {f"code in {tree.name}": {"PYTHONPATH": str(tree.resolve())} for tree in args.before} | {
        f"start round {size}": {"EXPORT_EXTRACTOR_START_ROUND": str(size), "PYTHONPATH": here} for size in args.rounds
    }
    variants: dict[str, tuple[int, dict[str, str]]] = {}
    for replicas in args.extractors:
        for code, env in codes.items():
            name = f"{replicas} extractor{'s' if replicas > 1 else ''}, {code}"
            variants[name] = (replicas, env | {"PYTHONSAFEPATH": "1"})
    catalogs = ["sqlite", "postgresql"] if args.catalog == "both" else [args.catalog]
    results: dict[tuple[str, str], list[Turn]] = {}
    with ExitStack() as stack:
        kafka = stack.enter_context(LocalKafka())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        postgres = stack.enter_context(LocalPostgres()) if "postgresql" in catalogs else None
        for catalog in catalogs:
            if postgres is not None and catalog == "postgresql":
                catalog_url = postgres.create_database(f"burst_{uuid.uuid4().hex[:6]}")
            else:
                catalog_url = f"sqlite:///{workdir / 'catalog.db'}"
            setup = Setup(
                kafka, workdir, args.runs, catalog_url, postgres if catalog == "postgresql" else None, args.extracted
            )
            print(
                f"{args.runs} runs of 3 members due at one instant, {catalog} catalog, SQLite store, "
                f"nproc {os.cpu_count()}",
                flush=True,
            )
            for turn in range(args.turns):
                for variant, (replicas, env) in variants.items():
                    started = time.perf_counter()
                    measured = setup.turn(f"turn {turn + 1}, {catalog}, {variant}", replicas, env)
                    results.setdefault((catalog, variant), []).append(measured)
                    print(f"    ({time.perf_counter() - started:.0f} s with the extractors' start)", flush=True)
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for (catalog, variant), turns in results.items():
        delays = [d for t in turns for d in t.delays]
        cpu = {name: statistics.median(t.cpu[name] for t in turns) for name in turns[0].cpu}
        # From the instant to each turn's last start: what a burst's starts take, however close together.
        since_instant = [len(t.delays) / max(1e-9, max(t.delays)) for t in turns]
        extracted = [t.extracted for t in turns if t.extracted is not None]
        print(
            f"[{catalog}, {variant}] runs started a second: median {statistics.median(t.rate for t in turns):.1f} "
            f"(turns: {', '.join(f'{t.rate:.1f}' for t in turns)}); from the instant to the last start: median "
            f"{statistics.median(since_instant):.1f} (turns: {', '.join(f'{r:.1f}' for r in since_instant)}); "
            f"start delay over all turns p50 "
            f"{percentile(delays, 0.5):.2f} s, p99 {percentile(delays, 0.99):.2f} s; CPU in cores (median): "
            + ", ".join(f"{name} {value:.2f}" for name, value in cpu.items())
            + (
                f"; every run extracted after the instant: median {statistics.median(extracted):.1f} s "
                f"(turns: {', '.join(f'{e:.1f}' for e in extracted)})"
                if extracted
                else ""
            )
        )


if __name__ == "__main__":
    main()
