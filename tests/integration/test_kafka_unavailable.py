"""A run requested while Kafka does not acknowledge (a frozen broker: SIGSTOP, it holds its connections and answers
nothing) is answered 503 ``kafka-unavailable`` naming the run recorded queued and its unknown outcome: by the admin
API, by the console (a 503 page) and by exportctl through the API (exit 5, the detail). Before, a 500 "unexpected
error" (the console: the exception itself). A retry under the same Idempotency-Key, once the broker is back,
publishes the run's request again under the same run id.

The admin's publisher is the one its composition root builds (``KafkaEventPublisher.over`` with
``PUBLISH_WAIT_SECONDS``), over a real producer, in-process; exportctl talks to it through a real HTTP server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn
from fastapi import FastAPI
from kafka.errors import MetadataEmptyBrokerList
from structlog.testing import capture_logs

from devtools.kafka_broker import LocalKafka
from devtools.processes import free_port, wait_until
from services.admin.dependencies import PUBLISH_BLOCK_SECONDS, PUBLISH_WAIT_SECONDS, kafka_publisher
from shared.events import RunRequested
from shared.kafka import ensure_topics
from shared.kafka.clients import close_producer, read_whole_topic
from shared.settings import CommonSettings
from tests.admin_app import in_process_api, seed
from tests.integration.test_console_fields import signed_in

pytestmark = pytest.mark.integration

RUNS = "/api/v1/export-definitions/nightly/runs"

T = TypeVar("T")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on a real HTTP server in a thread; its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, interval=0.05, what="the admin API serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


UNKNOWN = "its outcome is unknown: it starts if the broker received it"
NOT_PUBLISHED = "it was not published;"


def _queued(detail: str, outcome: str = UNKNOWN) -> uuid.UUID:
    """The run a 503 kafka-unavailable says was recorded queued, with ``outcome`` (unknown by default)."""
    assert detail.startswith("run "), detail
    assert " was recorded queued, but Kafka did not acknowledge its request (KafkaTimeoutError: " in detail
    assert outcome in detail, detail
    # With an Idempotency-Key a retry publishes the same run again; without one it would start another run, so the
    # message says how to cancel this one instead (session 54).
    assert (
        "retrying with the same Idempotency-Key publishes it again" in detail
        or "it was requested without an Idempotency-Key, so requesting it again starts another run: cancel" in detail
    ), detail
    return uuid.UUID(detail.split()[1])


def _requests_for(settings: CommonSettings, run_id: uuid.UUID) -> int:
    """How many run requests for ``run_id`` the topic holds now (read to its end offsets). A broker just thawed
    answers metadata listing no broker until it has registered with its controller again (KRaft fenced it while it
    was stopped): read once it lists itself (two fresh-clone CI runs of session 47 read in that window)."""
    values: list[bytes] = []

    def read() -> bool:
        try:
            values[:] = read_whole_topic(settings, settings.topics.run_requests)
        except MetadataEmptyBrokerList:
            return False
        return True

    wait_until(read, timeout=60, interval=0.5, what="the thawed broker listing itself in its metadata")
    return sum(RunRequested.model_validate_json(v).run_id == run_id for v in values)


def _exportctl_run(url: str, token: str) -> subprocess.CompletedProcess[str]:
    """``exportctl run nightly`` through the admin API at ``url``."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "run", "nightly"],
        env={**os.environ, "EXPORT_API_URL": url, "EXPORT_API_TOKEN": token, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _timed(request: Callable[[], T]) -> tuple[T, float]:
    """What ``request`` returned, and how many seconds it took."""
    started = time.monotonic()
    answer = request()
    return answer, time.monotonic() - started


def test_a_run_request_a_frozen_broker_does_not_acknowledge_is_a_503_naming_the_queued_run_and_a_retry_publishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freezable_broker: LocalKafka
) -> None:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    broker = freezable_broker
    with in_process_api(tmp_path) as api:
        settings = CommonSettings(
            kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", metrics_port=0
        )
        ensure_topics(settings, [settings.topics.run_requests])
        producer, api.app.state.context.publisher = kafka_publisher(settings, "admin")  # as the admin builds them
        try:
            with api.client() as client:
                seed(client)
            key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
            with (
                capture_logs() as logs,
                api.client("operator") as client,
                signed_in(api, "operator") as console,
                serving(api.app) as url,
            ):
                assert client.post(RUNS).status_code == 202  # the topic's leader known: the broker is then frozen
                broker.pause()
                try:  # the three requests at once: each waits out the admin's publish wait within the one freeze
                    with ThreadPoolExecutor(3) as requests:
                        api_request = requests.submit(_timed, lambda: client.post(RUNS, headers=key))
                        console_request = requests.submit(
                            console.post, "/exports/nightly/run", {"idempotency_key": f"console-{uuid.uuid4()}"}
                        )
                        exportctl_run = requests.submit(_exportctl_run, url, api.tokens["operator"])
                        failed, took = api_request.result()
                        page, exportctl = console_request.result(), exportctl_run.result()
                finally:
                    broker.resume()
                # The API: a 503 naming what failed, within the admin's wait (before: 500 "unexpected error").
                assert failed.status_code == 503, failed.text
                problem = failed.json()
                assert problem["type"] == "https://member-export.dev/problems/kafka-unavailable"
                run_id = _queued(problem["detail"])
                assert took < PUBLISH_WAIT_SECONDS + 5
                assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "queued"
                # The console: a 503 page saying the same.
                assert page.status_code == 503, page.text
                _queued(unescape(page.text).split('role="alert">', 1)[1].split("</p>", 1)[0])
                # exportctl through the API: exit 5 (unreachable, as documented for an API 5xx), the detail.
                assert exportctl.returncode == 5, exportctl.stderr
                assert exportctl.stderr.startswith("exportctl: 503: run "), exportctl.stderr
                _queued(exportctl.stderr.removeprefix("exportctl: 503: "))
                assert "Traceback" not in exportctl.stderr
                # Logged once per request, at warning, naming the operation and what was published where (in the
                # order the concurrent requests failed in).
                warnings = [entry for entry in logs if entry["event"] == "kafka-unavailable"]
                assert sorted((w["log_level"], w["operation"], w["outcome"]) for w in warnings) == [
                    ("warning", "POST /api/v1/export-definitions/{name}/runs", "unknown"),
                    ("warning", "POST /api/v1/export-definitions/{name}/runs", "unknown"),
                    ("warning", "POST /console/exports/{name}/run", "unknown"),
                ]
                [api_warning] = [w for w in warnings if w["run_id"] == str(run_id)]
                assert api_warning["operation"] == "POST /api/v1/export-definitions/{name}/runs"
                assert api_warning["what"] == f"the run request on {settings.topics.run_requests}"
                # The broker back: what the producer held is delivered (the frozen request's own record among
                # them, or not); the run's records counted then.
                producer.flush(timeout=60)
                before = _requests_for(settings, run_id)
                # The same key is the same run, its request published again under its id: one record more.
                again = client.post(RUNS, headers=key)
                assert again.status_code == 202, again.text
                assert again.json()["run_id"] == str(run_id)
            assert _requests_for(settings, run_id) == before + 1  # acknowledged before the 202: read to the end
        finally:
            close_producer(producer, 2)


def test_the_first_run_request_after_a_start_with_the_broker_frozen_is_a_503_within_the_publish_wait(
    tmp_path: Path, freezable_broker: LocalKafka
) -> None:
    """The admin's producer has no topic metadata yet (every start): its ``send()`` waits for it, bounded by
    ``PUBLISH_BLOCK_SECONDS`` within the one ``PUBLISH_WAIT_SECONDS`` (before: kafka-python's 60 s, then the wait;
    exportctl through the API gave up at 30 s without naming the run)."""
    broker = freezable_broker
    with in_process_api(tmp_path) as api:
        settings = CommonSettings(
            kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", metrics_port=0
        )
        ensure_topics(settings, [settings.topics.run_requests])
        producer, api.app.state.context.publisher = kafka_publisher(settings, "admin")  # nothing sent yet
        try:
            with api.client() as client:
                seed(client)
            with api.client("operator") as client, serving(api.app) as url:
                broker.pause()
                try:  # both at once, within the one freeze
                    with ThreadPoolExecutor(2) as requests:
                        api_request = requests.submit(
                            _timed, lambda: client.post(RUNS, headers={"Idempotency-Key": f"k-{uuid.uuid4()}"})
                        )
                        exportctl_run = requests.submit(_exportctl_run, url, api.tokens["operator"])
                        failed, took = api_request.result()
                        exportctl = exportctl_run.result()
                finally:
                    broker.resume()
            assert failed.status_code == 503, failed.text
            detail = failed.json()["detail"]
            _queued(detail, NOT_PUBLISHED)  # the producer refused it before taking it: nothing reached a broker
            assert f"after {PUBLISH_BLOCK_SECONDS} secs" in detail, detail  # the metadata never came
            assert took < PUBLISH_WAIT_SECONDS + 3
            assert exportctl.returncode == 5, exportctl.stderr
            _queued(exportctl.stderr.removeprefix("exportctl: 503: "), NOT_PUBLISHED)
        finally:
            close_producer(producer, 2)
