"""``exportctl run`` on the catalog directly connects to Kafka while it reads the catalog (its producer opened on a
thread, :mod:`shared.cli.kafka_connection`), and what a user sees stays as it was: the run published once, its
topics created, a refused run publishing nothing and creating no topic, without waiting for a broker that does not
answer, and leaving no producer behind."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from devtools.processes import wait_until
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.cli import kafka_connection
from shared.cli.common import CliSettings
from shared.cli.direct_runs import cmd_run
from shared.cli.exits import NOT_FOUND, UNREACHABLE, CliError
from shared.kafka import read_whole_topic, topic_specs
from shared.settings import CommonSettings
from tests.exportctl_catalog import nightly_catalog

pytestmark = pytest.mark.integration


def _cli_settings(tmp_path: Path, bootstrap: str, topic_prefix: str) -> CliSettings:
    return CliSettings(
        catalog_url=nightly_catalog(tmp_path),
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=topic_prefix,
        metrics_port=0,
    )


def _args(definition: str) -> argparse.Namespace:
    return argparse.Namespace(
        definition=definition, param=[], idempotency_key=None, allow_mass_removal=False, wait=False, timeout=60
    )


class Producers:
    """The producers exportctl makes, the threads it makes them on, those it closes (through ``close_producer``), and
    an event set when it starts making one."""

    def __init__(self) -> None:
        self.made: list[Any] = []
        self.made_on: list[str] = []
        self.closed: list[Any] = []
        self.making = threading.Event()

    def all_closed(self) -> bool:
        return all(any(producer is closed for closed in self.closed) for producer in self.made)


def _recording_producers(monkeypatch: pytest.MonkeyPatch) -> Producers:
    producers = Producers()
    real_make = kafka_connection.make_producer  # type: ignore[attr-defined]
    real_close = kafka_connection.close_producer  # type: ignore[attr-defined]

    def make_producer(*args: Any, **kwargs: Any) -> Any:
        producers.made_on.append(threading.current_thread().name)
        producers.making.set()
        producer = real_make(*args, **kwargs)
        producers.made.append(producer)
        return producer

    def close_producer(producer: Any, *args: Any, **kwargs: Any) -> Any:
        producers.closed.append(producer)
        return real_close(producer, *args, **kwargs)

    monkeypatch.setattr(kafka_connection, "make_producer", make_producer)
    monkeypatch.setattr(kafka_connection, "close_producer", close_producer)
    return producers


def _topics(settings: CommonSettings) -> list[str]:
    """The topics of the settings' prefix on the broker."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="test-early-producer")
    try:
        return sorted(name for name in admin.list_topics() if name.startswith(settings.topic_prefix))
    finally:
        admin.close()


def test_run_makes_its_producer_while_it_reads_the_definition_and_publishes_once(
    tmp_path: Path, settings: CommonSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli_settings(tmp_path, settings.kafka_bootstrap_servers, settings.topic_prefix)
    producers = _recording_producers(monkeypatch)
    seen_while_reading: list[bool] = []
    real_read = SqlDefinitionsStore.get_versioned

    def get_versioned(self: SqlDefinitionsStore, kind: Any, name: str) -> Any:
        # The definition's read waits (a bounded while) for the producer to be under way: before, it was made
        # only after the catalog was read, on the same thread, so this waited for nothing and saw it absent.
        seen_while_reading.append(producers.making.wait(10))
        return real_read(self, kind, name)

    monkeypatch.setattr(SqlDefinitionsStore, "get_versioned", get_versioned)

    assert cmd_run(cli, _args("nightly")) == 0

    run_id = capsys.readouterr().out.split()[1]
    assert seen_while_reading
    assert all(seen_while_reading)
    assert producers.made_on == ["exportctl-kafka"]  # once, on its own thread
    assert _topics(settings) == sorted(spec.name for spec in topic_specs(settings))  # the test's own prefix: new
    published = [json.loads(value) for value in read_whole_topic(settings, settings.topics.run_requests)]
    assert [(request["run_id"], request["definition"]) for request in published] == [(run_id, "nightly")]
    assert producers.all_closed()


def test_a_refused_run_publishes_nothing_creates_no_topic_and_leaves_no_producer_behind(
    tmp_path: Path, settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test's own prefix, no topic of it on the broker: a typo'd run against a cluster with the wrong prefix.
    cli = _cli_settings(tmp_path, settings.kafka_bootstrap_servers, settings.topic_prefix)
    producers = _recording_producers(monkeypatch)
    with pytest.raises(CliError) as refused:
        cmd_run(cli, _args("nope"))
    assert refused.value.code == NOT_FOUND
    assert "ExportDefinition 'nope' does not exist" in refused.value.message
    # Its producer, made on its thread before the refusal or after it, is closed either way; the thread has ended.
    wait_until(
        lambda: not _connecting() and producers.all_closed(), timeout=30, interval=0.01, what="the producer closed"
    )
    assert producers.made_on == ["exportctl-kafka"]  # connected all the same
    assert _topics(settings) == []
    assert list(read_whole_topic(settings, settings.topics.run_requests)) == []


def test_with_topics_owned_by_ops_a_run_names_those_missing_and_creates_none(
    tmp_path: Path, settings: CommonSettings
) -> None:
    cli = _cli_settings(tmp_path, settings.kafka_bootstrap_servers, settings.topic_prefix)
    with pytest.raises(CliError) as failed:
        cmd_run(cli.model_copy(update={"topics_create": False}), _args("nightly"))
    assert failed.value.code == UNREACHABLE
    assert "it was not published" in failed.value.message
    assert f"topics missing: {settings.topics.run_requests}" in failed.value.message
    assert _topics(settings) == []


def _connecting() -> bool:
    """Whether an exportctl producer is being opened (its thread alive)."""
    return any(t.name == "exportctl-kafka" and t.is_alive() for t in threading.enumerate())


def test_a_refused_run_does_not_wait_for_a_broker_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        cli = _cli_settings(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}", f"t{uuid.uuid4().hex[:10]}.")
        with pytest.raises(CliError) as refused:
            cmd_run(cli, _args("nope"))
        # Said while the connection check still waits for the broker's answer (up to 10 s): not after it.
        still_connecting = _connecting()
    assert refused.value.code == NOT_FOUND
    assert still_connecting
    wait_until(lambda: not _connecting(), timeout=30, interval=0.01, what="the connection's thread to end")
