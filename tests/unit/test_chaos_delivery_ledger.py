"""The chaos suite's count of members sent twice (tests/chaos/harness.py, :class:`DeliveryLedger`): its promise is per
run, "a member of a run sent twice comes under the same Idempotency-Key". Its scenarios run one after another on one
pipeline, every run sending the same members under keys of its own, and an earlier run's batches can reach the
partner again after that run ended (the dispatcher's commit refused after a broker restart: they are read again),
in the next scenario's window. Before, the harness counted members by id across the window and took such a batch,
sent again under its own key, for the next run's members sent under another key (CI's 3,250-13,250 with a 6 s
session timeout).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from shared.domain.runs import RunStatus
from tests.chaos import harness
from tests.chaos.harness import ChaosPipeline, Counted, DeliveryLedger

RUN_1 = "60d4220a-a53e-4ebc-9a7c-1562b788d406"
RUN_2 = "3077b238-e327-4735-8c7d-80912a15b0a4"


def members(first: int, last: int) -> list[object]:
    return list(range(first, last + 1))


class _NotStarted:
    """A server of the pipeline the accounting does not need (the broker, the databases, Toxiproxy, the SMTP sink)."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.port = self.advertised_port = 0


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChaosPipeline]:
    """A chaos pipeline whose partner (a real HTTP receiver) is the only server: exportctl requests run 1, then run 2,
    and the catalog records each succeeded, mailed once."""
    for server in ("Toxiproxy", "LocalKafka", "LocalPostgres", "SmtpSink"):
        monkeypatch.setattr(harness, server, _NotStarted)
    pipeline = ChaosPipeline(tmp_path, members=250)
    runs = iter([RUN_1, RUN_2])
    monkeypatch.setattr(pipeline, "_exportctl", lambda *_args: f"run {next(runs)} queued\n")
    record = SimpleNamespace(status=RunStatus.SUCCEEDED, delivered=250, failed=0)
    monkeypatch.setattr(pipeline, "catalog", SimpleNamespace(runs=SimpleNamespace(get_run=lambda _run: record)))
    mail = SimpleNamespace(text=lambda: f"runs {RUN_1} and {RUN_2} succeeded")
    monkeypatch.setattr(pipeline, "sink", SimpleNamespace(received=lambda: [mail]))
    monkeypatch.setattr(pipeline, "services", SimpleNamespace(dead=list))
    pipeline.partner.start()
    try:
        yield pipeline
    finally:
        pipeline.partner.stop()


def send(pipeline: ChaosPipeline, key: str, ids: list[object]) -> None:
    """A request of the dispatcher's: ``ids`` under the Idempotency-Key ``key``."""
    answer = httpx.post(
        f"{pipeline.partner.url}/v1/members", json=[{"id": i} for i in ids], headers={"Idempotency-Key": key}
    )
    assert answer.status_code == 200


def test_a_batch_of_the_run_before_sent_again_during_the_next_scenario_is_no_member_sent_under_another_key(
    pipeline: ChaosPipeline,
) -> None:
    first = pipeline.request_run()
    send(pipeline, f"{RUN_1}:0", members(1, 250))
    assert pipeline.outcome("broker SIGKILL + restart", first, started=time.monotonic(), healed=None).held
    second = pipeline.request_run()
    send(pipeline, f"{RUN_1}:0", members(1, 250))  # run 1's batch read again after run 1 ended: its own key
    send(pipeline, f"{RUN_2}:0", members(1, 250))

    outcome = pipeline.outcome("catalog stopped", second, started=time.monotonic(), healed=None)

    assert second == uuid.UUID(RUN_2)
    assert (outcome.received, outcome.duplicates, outcome.duplicates_under_another_key) == (250, 250, 0)
    assert outcome.held


def test_an_earlier_runs_batch_sent_again_under_its_key_in_a_later_window_is_a_duplicate_of_that_run() -> None:
    ledger = DeliveryLedger()
    ledger.open_window()  # the broker scenario's run
    ledger.record(f"{RUN_1}:0", members(1, 250))
    ledger.record(f"{RUN_1}:47", members(11_751, 12_000))
    ledger.open_window()  # the catalog scenario's run: run 1's batch 47 arrives again, then run 2's own batches
    ledger.record(f"{RUN_1}:47", members(11_751, 12_000))
    ledger.record(f"{RUN_2}:0", members(1, 250))
    ledger.record(f"{RUN_2}:47", members(11_751, 12_000))

    assert ledger.count(RUN_2) == Counted(received=500, duplicates=250, under_another_key=0)


def test_a_member_of_one_run_sent_under_two_of_its_keys_is_still_caught() -> None:
    ledger = DeliveryLedger()
    ledger.open_window()
    ledger.record(f"{RUN_1}:0", members(1, 250))
    ledger.record(f"{RUN_1}:1", members(1, 250))  # the same members in another batch of the run: another key

    assert ledger.count(RUN_1) == Counted(received=250, duplicates=250, under_another_key=250)


def test_an_earlier_runs_member_sent_again_under_another_of_its_keys_later_is_caught_in_the_later_window() -> None:
    ledger = DeliveryLedger()
    ledger.open_window()
    ledger.record(f"{RUN_1}:0", members(1, 250))
    ledger.open_window()
    ledger.record(f"{RUN_1}:0:0-125", members(1, 125))  # a part of the batch: not the key it came under first
    ledger.record(f"{RUN_2}:0", members(1, 250))

    assert ledger.count(RUN_2) == Counted(received=250, duplicates=125, under_another_key=125)
