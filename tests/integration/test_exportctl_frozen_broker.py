"""``exportctl run`` in direct mode (on the catalog, no admin API) with a frozen broker (SIGSTOP: it holds its
connections and answers nothing): its Kafka producer is closed within ``PRODUCER_CLOSE_SECONDS`` and about a second
(before: kafka-python's unbounded close waited for what it held until the delivery timeout and more), and a run
request the broker did not acknowledge is exit 5 with a message naming the run recorded queued, its outcome unknown
(before: the client's raw error, "Kafka: KafkaTimeoutError: …", not saying a run was recorded).
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools.kafka_broker import LocalKafka
from shared.application import runs as run_use_cases
from shared.application.errors import PublishFailed
from shared.catalog import CatalogStores
from shared.cli.common import CliSettings
from shared.cli.direct import Direct, direct, on_catalog
from shared.cli.direct_runs import cmd_run
from shared.cli.exits import UNREACHABLE, CliError
from shared.domain.runs import RunStatus
from shared.events import Priority
from shared.kafka import Outgoing
from shared.kafka.clients import PRODUCER_CLOSE_SECONDS
from tests.exportctl_catalog import nightly_catalog

pytestmark = pytest.mark.integration

#: The shortest delivery timeout the settings take with the default request timeout (30 s): a close that waited for
#: what the producer held until then would outlast its bound.
DELIVERY_SECONDS = 31.0
#: A short request timeout (``EXPORT_KAFKA_REQUEST_TIMEOUT_MS``) where the test waits for the frozen broker's silence:
#: a request's, and the connection check's of an exportctl that connects to it.
SHORT_REQUEST_SECONDS = 3.0
#: The shortest delivery timeout the settings take with it: how long the run request's wait lasts then.
SHORT_DELIVERY_SECONDS = SHORT_REQUEST_SECONDS + 1


def _settings(tmp_path: Path, broker: LocalKafka, *, short: bool = False) -> CliSettings:
    """exportctl's settings; ``short``: the request and delivery timeouts shortened (the same waits, sooner over)."""
    request, delivery = (SHORT_REQUEST_SECONDS, SHORT_DELIVERY_SECONDS) if short else (30.0, DELIVERY_SECONDS)
    return CliSettings(
        catalog_url=nightly_catalog(tmp_path),
        kafka_bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        kafka_request_timeout_ms=int(request * 1000),
        kafka_delivery_timeout_ms=int(delivery * 1000),
        metrics_port=0,
    )


def test_exportctl_direct_closes_its_producer_within_its_bound_when_the_broker_froze(
    tmp_path: Path, freezable_broker: LocalKafka
) -> None:
    broker = freezable_broker
    settings = _settings(tmp_path, broker)
    topic = settings.topics.run_requests
    try:
        with direct(settings) as context:
            context._send([Outgoing(topic, "k", b"acknowledged")])  # connected, the topic's leader known
            broker.pause()
            assert context._producer is not None
            # A record held, not acknowledged, as a wait ended by Ctrl-C (or by its failure) leaves it.
            context._producer.send(topic, key=b"k", value=b"held")
            started = time.monotonic()
        took = time.monotonic() - started
    finally:
        broker.resume()
    # Before: until the delivery timeout (31 s here, 120 s by default) and more (40 s measured).
    assert took < PRODUCER_CLOSE_SECONDS + 3, f"closed in {took:.1f} s"


def _queued_run(message: str, outcome: str) -> uuid.UUID:
    """The run the message says was recorded queued, with ``outcome``."""
    assert message.startswith("run "), message  # before: "Kafka: KafkaTimeoutError: Expiring 1 record(s) …"
    assert " was recorded queued, but Kafka did not acknowledge its request (" in message
    assert outcome in message, message
    return uuid.UUID(message.split()[1])


def _status(settings: CliSettings, run_id: uuid.UUID) -> RunStatus | None:
    stores = CatalogStores.from_url(settings.catalog_url)
    try:
        record = stores.runs.get_run(run_id)
        return record.status if record is not None else None
    finally:
        stores.close()


def _refused(settings: CliSettings, args: argparse.Namespace) -> CliError:
    """The error ``exportctl run`` (direct) ends with; none: an ``AssertionError``."""
    try:
        cmd_run(settings, args)
    except CliError as exc:
        return exc
    raise AssertionError("exportctl run succeeded")


def test_a_run_request_the_frozen_broker_does_not_acknowledge_exits_5_naming_the_queued_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], freezable_broker: LocalKafka
) -> None:
    broker = freezable_broker
    # The request's wait, and the connection check's, shortened: both as long as the request timeout says (before:
    # 31 s at least, the shortest delivery timeout the default request timeout allowed, and the check's 10 s).
    settings = _settings(tmp_path, broker, short=True)
    with direct(settings) as context:  # the topics made
        context._send([Outgoing(settings.topics.run_requests, "k", b"acknowledged")])
    args = argparse.Namespace(
        definition="nightly", param=[], idempotency_key=None, allow_mass_removal=False, wait=False, timeout=60
    )
    refusing: list[Future[CliError]] = []
    with ThreadPoolExecutor(1) as beside:
        try:
            # Frozen once exportctl is connected: the request is handed over, never acknowledged.
            def frozen_after_connecting(context: Direct) -> int:
                context._send([Outgoing(settings.topics.run_requests, "k", b"acknowledged")])
                broker.pause()
                # Frozen before another exportctl connects: its connection check fails, nothing is handed to the
                # broker (run beside this one's wait for its acknowledgement, within the same freeze).
                refusing.append(beside.submit(_refused, settings, args))
                run_use_cases.request_run(
                    context.actor,
                    "nightly",
                    store=context.stores.definitions,
                    runs=context.stores.runs,
                    publisher=context.publisher(),
                )
                return 0

            started = time.monotonic()
            with pytest.raises(CliError) as failed:
                on_catalog(settings, frozen_after_connecting)
            took = time.monotonic() - started
            refused = refusing[0].result(timeout=60)  # before the broker is resumed: refused while it was frozen
        finally:
            broker.resume()
    assert refused.code == UNREACHABLE
    not_sent = _queued_run(refused.message, "KafkaSetupError")
    assert "it was not published;" in refused.message
    assert _status(settings, not_sent) is RunStatus.QUEUED
    assert capsys.readouterr().out == ""  # no "run … requested" said
    assert failed.value.code == UNREACHABLE
    unknown = _queued_run(failed.value.message, "(KafkaTimeoutError: ")
    assert "its outcome is unknown: it starts if the broker received it" in failed.value.message
    assert _status(settings, unknown) is RunStatus.QUEUED
    # The record's wait (the delivery timeout), then the bounded close.
    assert took < SHORT_DELIVERY_SECONDS + PRODUCER_CLOSE_SECONDS + 5, f"took {took:.1f} s"


def test_a_replay_publication_ends_within_its_bound_when_the_send_blocks_for_metadata_of_a_frozen_broker(
    tmp_path: Path, freezable_broker: LocalKafka
) -> None:
    """``exportctl dead-letters replay``'s publisher (``Direct.publisher(REPLAY_PUBLISH_WAIT_SECONDS)``, a shorter
    bound here): frozen after its run.started was acknowledged, the member batches' topic (its metadata never asked
    for) makes the producer's ``send()`` block: the publication fails within the bound (before: the send blocked
    kafka-python's 60 s, and the bound's wait for acknowledgement only started after it)."""
    broker = freezable_broker
    settings = _settings(tmp_path, broker)
    wait = 3.0
    try:
        with direct(settings) as context:
            publisher = context.publisher(wait)
            publisher.send([Outgoing(settings.topics.run_events, "k", b"acknowledged")], "run.started")
            assert context._producer is not None
            assert context._producer.config["max_block_ms"] <= wait * 1000  # before: 60000
            broker.pause()
            started = time.monotonic()
            with pytest.raises(PublishFailed) as failed:
                publisher.publish_member_batches(Priority.NORMAL, [("k:0", b"batch")])
            took = time.monotonic() - started
    finally:
        broker.resume()
    assert took < wait + 2, f"failed after {took:.1f} s"
    assert "KafkaTimeoutError" in failed.value.reason, failed.value.reason
