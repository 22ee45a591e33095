"""SIGTERM while a service is still starting stops it cleanly (exit 0), as it would once running.

Kubernetes sends SIGTERM to pods still starting (a rollout replacing them, a node drained). Before, a service
only handled the signal from its loop on, so one that came during start-up ended it with status 143 (-15 here),
read as a crash. Each service runs as a real process on real Kafka; it is frozen (SIGSTOP) the moment it says it
is starting (it has begun catching SIGUSR1, for its stack dumps: the first thing start-up does after logging is
configured), given SIGTERM while frozen, and let go: the signal comes at a known point of start-up.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from shared.catalog import CatalogStores
from tests.kafka_helpers import service_env

pytestmark = pytest.mark.integration

#: What each service logs once its start-up is over and its loop runs.
RUNNING = {
    "dispatcher": "consumer loop started",
    "extractor": "consumer loop started",
    "notifier": "consumer loop started",
    "scheduler": "scheduler started",
}


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (sig - 1)))


@pytest.mark.parametrize("service", sorted(RUNNING))
def test_sigterm_during_start_up_stops_the_service_with_status_0(service: str, kafka_bootstrap: str, tmp_path: Path):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(catalog_url, migrate=True).close()
    env = service_env(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", catalog_url, f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = LocalPipeline(env=env, log_dir=tmp_path, services=(service,))
    pipeline.start()
    process = pipeline.processes[service]
    try:
        wait_until(
            lambda: bool(pipeline.dead()) or _catches(process.pid, signal.SIGUSR1),
            timeout=60,
            interval=0.005,
            what=f"{service} starting",
        )
        process.send_signal(signal.SIGSTOP)
        # Frozen, its log says where it stands: its loop not started yet.
        assert RUNNING[service] not in pipeline.log(service)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        status = process.wait(60)
    finally:
        pipeline.stop()
    log = pipeline.log(service)
    assert status == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
