"""A running service asked for its threads' stacks (SIGUSR1): they come as JSON log lines, and it goes on.

The dispatcher as a real process on real Kafka, idle in its consumer loop; its whole log must stay JSON lines
(``kubectl logs | jq``), the stacks among them, one line per thread.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from shared.catalog import CatalogStores
from shared.stack_dumps import STACK_DUMP_SIGNAL
from tests.kafka_helpers import service_env

pytestmark = pytest.mark.integration


def _lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines()]  # every line JSON, or this fails


def _dump(pipeline: LocalPipeline) -> dict[str, dict[str, Any]] | None:
    """The first dump's lines by thread name, once all of them are in the log.

    Counted by line, not by name: a dump may list two thread states of one name (a thread that ended and the one
    started in its place, still both in the interpreter's list: seen in CI with an asyncio portal thread)."""
    lines = [line for line in _lines(pipeline.log("dispatcher")) if line["event"] == "thread stack"]
    if not lines or len(lines) != lines[0]["threads"]:
        return None
    return {line["thread"]: line for line in lines}


def test_a_running_service_logs_every_threads_stack_as_json_on_sigusr1_and_goes_on(
    kafka_bootstrap: str, tmp_path: Path
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(catalog_url, migrate=True).close()
    env = service_env(kafka_bootstrap, f"s{uuid.uuid4().hex[:10]}.", catalog_url, f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = LocalPipeline(env=env, log_dir=tmp_path, services=("dispatcher",))
    pipeline.start()
    try:
        # Started (the stacks are asked for once it has said so: before, SIGUSR1 would end it).
        wait_until(
            lambda: bool(pipeline.dead()) or "service starting" in pipeline.log("dispatcher"),
            timeout=120,
            what="started",
        )
        assert not pipeline.dead(), pipeline.log("dispatcher")
        pipeline.processes["dispatcher"].send_signal(STACK_DUMP_SIGNAL)
        with contextlib.suppress(TimeoutError):  # the assertion below says what the log holds instead
            wait_until(lambda: bool(pipeline.dead()) or _dump(pipeline) is not None, timeout=30, what="the stacks")
        stacks = _dump(pipeline)
        assert stacks is not None, (pipeline.dead(), pipeline.log("dispatcher")[-5000:])
        assert {"MainThread", "stack-dumps"} <= set(stacks)
        assert all(line["service"] == "dispatcher" and line["dump"] == 1 for line in stacks.values())
        # Where the service waits: its own code, below the entry point.
        assert any("services/dispatcher" in frame for frame in stacks["MainThread"]["frames"])
        assert not pipeline.dead()  # it goes on
    finally:
        codes = pipeline.stop()
    assert codes == {"dispatcher": 0}
    _lines(pipeline.log("dispatcher"))  # to the end
