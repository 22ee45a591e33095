"""Extractor replicas as real processes, in one consumer group: started, joined, killed, stopped (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import CoordinatorNotAvailableError

from devtools.processes import wait_until
from shared.events import RUN_EVENT_ADAPTER, ExtractionCompleted, RunFailed


class ExtractorReplicas:
    """``count`` processes of ``python -m services.extractor`` with ``env``, logging to ``log_dir``/extractor-N.log."""

    def __init__(self, env: dict[str, str], count: int, log_dir: Path) -> None:
        self.env = {**os.environ, **env, "EXPORT_METRICS_PORT": "0"}
        self.count = count
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> ExtractorReplicas:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            with self.log_path(index).open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.extractor"], env=self.env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        return self

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"extractor-{index}.log"

    def log_lines(self, index: int) -> list[dict[str, Any]]:
        """The replica's JSON log lines."""
        lines = []
        for line in self.log_path(index).read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def wait_joined(self, bootstrap: str, topic_prefix: str, timeout: float = 90) -> None:
        """Until every replica holds partitions of the run-requests topic (a stable group of ``count``)."""
        group = f"{topic_prefix}member-export-extractor"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)

        def joined() -> bool:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"an extractor exited: see {self.log_dir}")
            try:
                described = admin.describe_groups([group]).get(group, {})
            except CoordinatorNotAvailableError:  # a fresh broker: the group coordinator is not up yet
                return False
            return described.get("group_state") == "Stable" and len(described.get("members") or []) == self.count

        try:
            wait_until(joined, timeout=timeout, interval=0.25, what=f"{self.count} extractors in group {group}")
        finally:
            admin.close()

    def pause(self, index: int) -> None:
        """SIGSTOP one replica: it writes nothing more (store, log, Kafka) until ``resume`` or ``kill``."""
        self.processes[index].send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        """SIGCONT a paused replica."""
        self.processes[index].send_signal(signal.SIGCONT)

    def kill(self, index: int) -> None:
        """SIGKILL one replica, as a crash would."""
        self.processes[index].kill()
        self.processes[index].wait()

    def stop(self, timeout: float = 30) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused replica would not act on the SIGTERM
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_extraction(bootstrap: str, run_events_topic: str, run_id: uuid.UUID, timeout: float = 300) -> Any:
    """The run's ExtractionCompleted (or RunFailed) from the run-events topic, read from its beginning."""
    consumer = KafkaConsumer(run_events_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                for record in records:
                    event = RUN_EVENT_ADAPTER.validate_json(record.value)
                    if event.run_id == run_id and isinstance(event, ExtractionCompleted | RunFailed):
                        return event
    finally:
        consumer.close()
    raise TimeoutError(f"run {run_id} not extracted in {timeout:.0f} s")
