"""The consumer loop rides out its dependencies on a real broker: a record that meets a database outage is
handed back and handled once the database answers (never dead-lettered), a refused commit is not fatal, and a loop
interrupted by its broker goes on soon after the broker is back, however long its backoff has grown."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from kafka.errors import CommitFailedError
from prometheus_client import REGISTRY

from devtools.kafka_broker import QUICK_RESTART, LocalKafka
from devtools.processes import free_port, wait_until
from shared.events import RunRequested
from shared.health import Health, serve_health_and_metrics
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics
from shared.kafka import loop as consumer_loop
from shared.kafka.clients import make_consumer
from shared.kafka.loop import MAX_INTERRUPTION_BACKOFF_SECONDS, NOT_IN_GROUP, MetadataAnswered
from shared.settings import CommonSettings
from tests.integration.test_consumer_loop import _loop
from tests.kafka_helpers import produce, read_records_to_end, read_to_end

pytestmark = pytest.mark.integration


class LockedDatabase:
    """A real SQLite database another connection holds an exclusive lock on until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
        with self.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE handled (definition TEXT)")
        self._reader = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 10})  # waits for the loop
        self._blocker = sqlite3.connect(path, isolation_level=None)
        self._blocker.execute("BEGIN EXCLUSIVE")
        self.locked = True

    def release(self) -> None:
        self._blocker.execute("ROLLBACK")
        self.locked = False

    def close(self) -> None:
        self._blocker.close()
        self.engine.dispose()
        self._reader.dispose()

    def handled(self) -> list[str]:
        with self._reader.connect() as connection:
            return [row[0] for row in connection.exec_driver_sql("SELECT definition FROM handled ORDER BY rowid")]


@contextmanager
def _running(loop: ConsumerLoop[RunRequested]) -> Iterator[None]:
    thread = threading.Thread(target=loop.run, name="loop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stopping.set()
        thread.join(30)
        assert not thread.is_alive()


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(condition, timeout=timeout, interval=0.02, what="the loop to reach the expected state")


def _interruptions(service: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "member_export_consumer_rounds_interrupted_total", {"service": service, "cause": "OperationalError"}
        )
        or 0.0
    )


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_records_meeting_a_database_outage_are_handled_in_order_once_it_answers_and_none_is_dead_lettered(
    settings: CommonSettings, tmp_path: Path, rounds: bool
):
    ensure_topics(settings)
    topics = settings.topics
    database = LockedDatabase(tmp_path / "catalog.db")
    service = f"outage-{rounds}"

    def handler(request: RunRequested) -> list[Outgoing]:
        with database.engine.begin() as connection:  # raises "database is locked" while the lock is held
            connection.exec_driver_sql("INSERT INTO handled VALUES (?)", (request.definition,))
        return []

    definitions = [f"d{i}" for i in range(6)]
    # One key: one partition, so the order of handling is the order of the records.
    produce(
        settings.kafka_bootstrap_servers,
        topics.run_requests,
        [("one-key", RunRequested(definition=d).to_bytes()) for d in definitions],
    )
    loop = _loop(settings, handler, rounds=rounds, service=service)
    try:
        with _running(loop):
            _wait(lambda: _interruptions(service) >= 2)
            assert loop.interrupted, "the loop says it is waiting out a dependency"
            assert loop.health.live()[0], "an outage is no reason to restart the pod"
            assert loop.health.ready() == (False, "waiting out a dependency: OperationalError: database is locked")
            database.release()
            _wait(lambda: database.handled() == definitions)
            _wait(lambda: not loop.interrupted and loop.health.ready()[0])
    finally:
        database.close()
    assert read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters) == []


def test_a_commit_the_group_refuses_is_counted_and_the_loop_goes_on(settings: CommonSettings):
    ensure_topics(settings)
    topics = settings.topics
    handled: list[str] = []

    def handler(request: RunRequested) -> list[Outgoing]:
        handled.append(request.definition)
        return []

    loop = _loop(settings, handler, service="commit-refused")
    commit = loop.consumer.commit
    refusals = [CommitFailedError("[Error 25] UnknownMemberIdError: the group moved on")]

    def refusing_commit(*args, **kwargs):
        if refusals:
            raise refusals.pop()
        return commit(*args, **kwargs)

    loop.consumer.commit = refusing_commit
    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("k", RunRequested(definition="first").to_bytes())])
    with _running(loop):
        _wait(lambda: handled == ["first"] and not refusals)
        produce(
            settings.kafka_bootstrap_servers, topics.run_requests, [("k", RunRequested(definition="second").to_bytes())]
        )
        _wait(lambda: "second" in handled)
    refused = REGISTRY.get_sample_value(
        "member_export_consumer_commits_refused_total", {"service": "commit-refused", "cause": "CommitFailedError"}
    )
    assert refused == 1


def test_a_wedged_loop_is_not_live_until_it_comes_round_again(settings: CommonSettings, tmp_path: Path):
    ensure_topics(settings)
    topics = settings.topics
    release = threading.Event()

    def handler(request: RunRequested) -> list[Outgoing]:
        if request.definition == "wedges":
            release.wait(60)  # a handler stuck on a call that never answers
        return []

    health = Health(stall_seconds=2)
    loop = _loop(settings, handler, service="wedged")
    loop.health = health
    port = free_port()
    server = serve_health_and_metrics(port, health)
    probe = f"http://127.0.0.1:{port}"
    try:
        with _running(loop):
            _wait(lambda: httpx.get(f"{probe}/readyz").status_code == 200)
            produce(
                settings.kafka_bootstrap_servers,
                topics.run_requests,
                [("k", RunRequested(definition="wedges").to_bytes())],
            )
            _wait(lambda: httpx.get(f"{probe}/livez").status_code == 503)
            assert "has not come round" in httpx.get(f"{probe}/livez").text
            release.set()
            _wait(lambda: httpx.get(f"{probe}/livez").status_code == 200)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_consumer_is_ready_once_in_its_group_and_not_ready_while_its_broker_is_down(tmp_path: Path):
    # A broker of the test's own, to stop and start again on its data: ready again within seconds of its restart.
    with LocalKafka(tmp_path / "kafka", properties=QUICK_RESTART) as broker:
        _ready_across_a_broker_restart(broker, tmp_path)


def _own_broker_settings(
    broker: LocalKafka, tmp_path: Path, prefix: str, *, delivery_timeout_ms: int = 120_000
) -> CommonSettings:
    """Settings for a test's own broker: one partition a topic, the shortest session timeout, and a producer's
    delivery timeout (its request timeout 1 s less)."""
    return CommonSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=prefix,
        topic_partitions=1,
        catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
        metrics_port=0,
        # The least the broker allows (its group.min.session.timeout.ms): the unanswered heartbeats that make the
        # consumer not ready take 6 s instead of the default 10 s.
        kafka_session_timeout_ms=6_000,
        kafka_request_timeout_ms=min(30_000, delivery_timeout_ms - 1_000),
        kafka_delivery_timeout_ms=delivery_timeout_ms,
    )


def _ready_across_a_broker_restart(broker: LocalKafka, tmp_path: Path) -> None:
    settings = _own_broker_settings(broker, tmp_path, "ready.")
    ensure_topics(settings)
    health = Health(stall_seconds=600)
    loop = _loop(settings, lambda request: [], service="ready")
    loop.health = health
    with _running(loop):
        # In its group: partitions assigned and a heartbeat answered since (ready alone held before the loop had
        # started, which then said not in its group until it joined: a kill then proved nothing).
        _wait(lambda: bool(loop.consumer.assignment()) and health.ready()[0], timeout=60)
        broker.kill()
        _wait(lambda: not health.ready()[0], timeout=60)
        reason = health.ready()[1]
        # Whichever it notices first: the heartbeats going unanswered, or a poll failing to connect.
        assert reason == NOT_IN_GROUP or "KafkaConnectionError" in reason, reason
        assert health.live()[0], "a broker away is no reason to restart the pod"
        broker.start(keep_data=True)
        _wait(lambda: health.ready()[0], timeout=90)


#: How soon after its broker is back an interrupted loop handles the records it handed back: the client reaching the
#: broker again (its reconnect backoff), a probe's pause, the group's rejoin. Far below the 30 s backoff it outlasts.
RESUMED_WITHIN_SECONDS = 15.0


@pytest.mark.parametrize("rounds_in_flight", [0, 2], ids=["one-by-one", "rounds-in-flight"])
def test_a_loop_interrupted_by_its_broker_resumes_soon_after_the_broker_is_back_whatever_its_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds_in_flight: int
):
    # The longest backoff from the first interruption on (as after a few in a row): the loop would otherwise wait it
    # out after the broker is back.
    monkeypatch.setattr(consumer_loop, "INTERRUPTION_BACKOFF_SECONDS", MAX_INTERRUPTION_BACKOFF_SECONDS)
    with LocalKafka(tmp_path / "kafka", properties=QUICK_RESTART) as broker:
        _resumes_after_a_broker_restart(broker, tmp_path, rounds_in_flight)


def _resumes_after_a_broker_restart(broker: LocalKafka, tmp_path: Path, rounds_in_flight: int) -> None:
    # The outcome of the record in hand when the broker dies fails within 2 s: the poll is interrupted.
    settings = _own_broker_settings(broker, tmp_path, "resume.", delivery_timeout_ms=2_000)
    ensure_topics(settings)
    topics = settings.topics
    handled: list[str] = []
    in_hand, broker_killed = threading.Event(), threading.Event()

    def handler(request: RunRequested) -> list[Outgoing]:
        handled.append(request.definition)
        if request.definition == "in-hand" and not broker_killed.is_set():
            in_hand.set()
            broker_killed.wait(60)
        return [Outgoing(topics.run_events, request.definition, b"{}")]

    service = f"resume-{rounds_in_flight}"
    loop = _loop(
        settings, handler, rounds=rounds_in_flight > 0, service=service, rounds_in_flight=max(1, rounds_in_flight)
    )
    produce(settings.kafka_bootstrap_servers, topics.run_requests, [("k", RunRequested(definition="first").to_bytes())])
    with _running(loop):
        _wait(lambda: handled == ["first"])  # the producer knows the outcome's topic: its send does not block
        produce(
            settings.kafka_bootstrap_servers,
            topics.run_requests,
            [("k", RunRequested(definition="in-hand").to_bytes())],
        )
        _wait(in_hand.is_set)
        # What the loop's probe reads, on a client of the test's own: a broker answering is not "answered again".
        witness = make_consumer(settings, f"{service}-witness", [topics.run_requests])
        try:
            witness.topics()  # bootstrapped
            live = MetadataAnswered(witness)
            update = witness._client.cluster.request_update()  # the probe's own (one update is pending at a time)
            _wait(lambda: update.is_done)
            assert update.succeeded()
            assert live() is False, "a broker answering from the first update on was never away"
            assert not live.seen_away
            broker.kill()
            broker_killed.set()
            _wait(lambda: loop.interrupted)  # its outcome not produced: handed back, and the loop waits 30 s
            away = MetadataAnswered(witness)
            _wait(lambda: (away(), away.seen_away)[1], timeout=10)
            broker.start(keep_data=True)
            back = time.monotonic()
            _wait(lambda: handled.count("in-hand") == 2 or time.monotonic() - back > RESUMED_WITHIN_SECONDS)
            resumed = time.monotonic() - back
            assert handled.count("in-hand") == 2, f"handled again {resumed:.1f} s after the broker was back: {handled}"
            _wait(away, timeout=RESUMED_WITHIN_SECONDS)  # the probe, seen the broker away, says when it answers again
        finally:
            witness.close()
        _wait(lambda: not loop.interrupted)  # resumed: no longer waiting out a dependency
    assert handled == ["first", "in-hand", "in-hand"]
    outcomes = read_records_to_end(settings.kafka_bootstrap_servers, topics.run_events)
    assert [record.key for record in outcomes] == [b"first", b"in-hand"], "its outcome produced once, once back"
