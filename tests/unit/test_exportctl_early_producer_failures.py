"""``exportctl run``'s producer is connected on a thread (:class:`shared.cli.kafka_connection.EarlyProducer`):
whatever ends that thread, an ``Exception`` or not, is said to the command at its first publication, which never
waits for a thread that has ended."""

from __future__ import annotations

import threading

import pytest

from shared.cli import kafka_connection
from shared.cli.common import CliSettings


@pytest.mark.parametrize(
    "raised", [SystemExit("anything not an Exception"), KeyboardInterrupt(), GeneratorExit()], ids=type
)
def test_the_producer_raises_what_ended_its_thread_rather_than_waiting_for_ever(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(kafka_connection, "require_kafka", fail)  # the first step of connecting
    early = kafka_connection.EarlyProducer(CliSettings(kafka_bootstrap_servers="127.0.0.1:9", metrics_port=0))
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            early.producer()
        except BaseException as exc:  # noqa: BLE001 - what the command sees, whatever it is
            outcome.append(exc)

    publishing = threading.Thread(target=publish, daemon=True)  # so that a producer() that hangs fails the test
    publishing.start()
    publishing.join(30)
    early.close()
    assert not publishing.is_alive()
    assert outcome == [raised]
