"""``exportctl dead-letters replay`` and ``list`` when the dead-letter topic cannot be read to its end in time (the
read's builtin ``TimeoutError``): exit 5 with the admin API's and the console's text, as other Kafka unavailability
(before: the replay fell through to "unexpected error: TimeoutError: …", exit 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import shared.kafka.event_publisher as event_publisher
from shared.application.actors import local_operator
from shared.application.runs import request_run
from shared.catalog import CatalogStores
from shared.cli import dead_letters, reachability
from shared.cli.common import CliSettings
from shared.cli.exits import UNREACHABLE, CliError
from tests.admin_app import RecordingPublisher
from tests.exportctl_catalog import nightly_catalog

TOO_SLOW = "could not read exports.dead-letters to its end within 60 s"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliSettings:
    def too_slow(*args: object, **kwargs: object) -> list[bytes]:
        raise TimeoutError(TOO_SLOW)

    monkeypatch.setattr(event_publisher, "read_whole_topic", too_slow)
    monkeypatch.setattr(reachability, "require_kafka", lambda servers: None)
    return CliSettings(catalog_url=nightly_catalog(tmp_path), kafka_bootstrap_servers="127.0.0.1:9", metrics_port=0)


def test_a_replay_whose_dead_letters_time_out_exits_5_saying_no_replay_run_was_recorded(settings: CliSettings):
    stores = CatalogStores.from_url(settings.catalog_url)
    try:
        run = request_run(
            local_operator("me"), "nightly", store=stores.definitions, runs=stores.runs, publisher=RecordingPublisher()
        ).run_id
    finally:
        stores.close()
    args = argparse.Namespace(run=str(run), wait=False, timeout=1.0, idempotency_key="k1")
    with pytest.raises(CliError) as failed:
        dead_letters.cmd_replay(settings, args)
    assert failed.value.code == UNREACHABLE  # before: the TimeoutError itself (exit 1, "unexpected error")
    assert str(failed.value) == (
        f"the dead letters cannot be read now, no replay run was recorded: TimeoutError: {TOO_SLOW} (the "
        "Idempotency-Key stays bound to this run's replay: retry with it)"
    )


def test_a_listing_whose_dead_letters_time_out_exits_5(settings: CliSettings) -> None:
    args = argparse.Namespace(run=None, definition=None, output="table")
    with pytest.raises(CliError) as failed:
        dead_letters.cmd_list(settings, args)
    assert (failed.value.code, str(failed.value)) == (
        UNREACHABLE,
        f"the dead letters cannot be read now: TimeoutError: {TOO_SLOW}",
    )
