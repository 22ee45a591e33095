"""A cancel and a replay Kafka does not acknowledge (a frozen broker: SIGSTOP, it holds its connections and answers
nothing), through the admin API and the console, and their retries once it is back.

A cancel is answered 503 ``kafka-unavailable`` saying the run was recorded cancelled; the console re-shows the cancel's
confirmation with that, the run as recorded and a button that cancels it again; cancelling again publishes the
cancellation again (before: the API's 503 said only what the request wrote was kept, the console showed a bare error
page, and a second cancel was a 409 "has finished (cancelled)" that published nothing). A replay from the console
re-shows its confirmation (503) naming the replay run recorded queued, with a link to it, and the same
Idempotency-Key: sent again, it is that replay run published again, not a second replay run.

The admin's publisher is built as its composition root builds it (a real producer, ``KafkaEventPublisher.over``),
with a shorter wait than ``PUBLISH_WAIT_SECONDS`` so a frozen publication costs seconds. One broker for the module.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from kafka import KafkaProducer

from devtools.kafka_broker import LocalKafka
from services.admin.console.context import ConsoleContext
from services.admin.console.gate import ConsoleGate
from services.admin.dependencies import MAX_DEAD_LETTER_READS, DeadLetterReplays
from shared.application.errors import DeadLettersUnreadable, PublishFailed
from shared.events import RUN_EVENTS_RECORD_ADAPTER, DeadLetter, Priority, RunCancelled, RunFailed, RunStarted
from shared.kafka import ensure_topics
from shared.kafka.clients import close_producer, make_producer, read_whole_topic
from shared.kafka.event_publisher import KafkaEventPublisher
from shared.settings import CommonSettings
from tests.admin_app import InProcessApi, RecordingPublisher, in_process_api, seed
from tests.integration.test_console_fields import Console, signed_in

if TYPE_CHECKING:
    from starlette.testclient import TestClient  # as tests.admin_app imports it (its warning silenced)

pytestmark = pytest.mark.integration

RUNS = "/api/v1/export-definitions/nightly/runs"
#: The publisher's wait (the admin's is ``PUBLISH_WAIT_SECONDS``), and its producer's block for metadata below it.
WAIT_SECONDS, BLOCK_SECONDS = 4.0, 2.0


@pytest.fixture
def broker(freezable_broker: LocalKafka) -> LocalKafka:
    """The integration tests' broker they freeze (``tests/integration/conftest.py``), not one of this module's own."""
    return freezable_broker


@dataclass
class Admin:
    api: InProcessApi
    settings: CommonSettings
    producer: KafkaProducer


@pytest.fixture
def admin(broker: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Admin]:
    """The admin API and its console over a publisher to ``broker`` (topics of their own), seeded."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    settings = CommonSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", metrics_port=0
    )
    topics = settings.topics
    ensure_topics(settings, [topics.run_requests, topics.run_events, topics.member_batches_for("normal")])
    with in_process_api(tmp_path) as api:
        producer = make_producer(settings, "admin", max_block_seconds=BLOCK_SECONDS)
        api.app.state.context.publisher = KafkaEventPublisher.over(producer, topics, WAIT_SECONDS)
        try:
            with api.client() as client:
                seed(client)
            yield Admin(api, settings, producer)
        finally:
            close_producer(producer, 2)


@contextmanager
def frozen(broker: LocalKafka) -> Iterator[None]:
    broker.pause()
    try:
        yield
    finally:
        broker.resume()


def _events(admin: Admin, kind: type, run_id: uuid.UUID) -> int:
    """How many events of ``kind`` of ``run_id`` the run-events topic holds, once what the producer held is sent."""
    admin.producer.flush(timeout=60)
    values = read_whole_topic(admin.settings, admin.settings.topics.run_events)
    return sum(
        isinstance(event, kind) and event.run_id == run_id
        for event in map(RUN_EVENTS_RECORD_ADAPTER.validate_json, values)
    )


def _alert(html: str) -> str:
    return unescape(html.split('role="alert">', 1)[1].split("</p>", 1)[0])


def _hidden(html: str, name: str) -> str:
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)">', html)
    assert found is not None, f"no hidden {name}"
    return unescape(found.group(1))


def _cancelled_detail(detail: str, run_id: uuid.UUID) -> None:
    assert detail.startswith(
        f"run {run_id} was recorded cancelled (the extractor and the dispatcher stop it), but Kafka did not "
        "acknowledge its cancellation event (KafkaTimeoutError: "
    ), detail
    assert detail.endswith("cancelling it again publishes it again"), detail


def test_a_cancel_kafka_does_not_acknowledge_is_said_recorded_and_cancelling_again_publishes_it(
    broker: LocalKafka, admin: Admin
) -> None:
    with admin.api.client("operator") as client, signed_in(admin.api, "operator") as console:
        by_api, by_console, first = (uuid.UUID(client.post(RUNS).json()["run_id"]) for _ in range(3))
        # Each topic's leader known to the producer (a cancel published): the broker is then frozen.
        assert client.post(f"/api/v1/runs/{first}/cancel").status_code == 200
        with frozen(broker):
            failed = client.post(f"/api/v1/runs/{by_api}/cancel")
            page = console.post(f"/runs/{by_console}/cancel", {})
        # The API: a 503 saying the cancellation is recorded (it holds) and how to publish it.
        assert failed.status_code == 503, failed.text
        assert failed.json()["type"] == "https://member-export.dev/problems/kafka-unavailable"
        _cancelled_detail(failed.json()["detail"], by_api)
        assert client.get(f"/api/v1/runs/{by_api}").json()["status"] == "cancelled"
        # The console: the cancel's confirmation again, with the reason, the run as recorded and the button.
        assert page.status_code == 503, page.text
        _cancelled_detail(_alert(page.text), by_console)
        assert "<dt>Status</dt><dd>cancelled</dd>" in page.text
        assert f'action="/console/runs/{by_console}/cancel"' in page.text
        assert ">Cancel the run again</button>" in page.text
        # Cancelling again (the broker back) publishes the cancellation again: one event more for each.
        published = _events(admin, RunCancelled, by_api), _events(admin, RunCancelled, by_console)
        again = client.post(f"/api/v1/runs/{by_api}/cancel")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "cancelled"
        retried = console.post(f"/runs/{by_console}/cancel", {})
        assert retried.status_code == 303, retried.text
        assert retried.headers["location"] == f"/console/runs/{by_console}"
        assert (_events(admin, RunCancelled, by_api), _events(admin, RunCancelled, by_console)) == (
            published[0] + 1,
            published[1] + 1,
        )


def unacknowledged_replay(message: str, original: uuid.UUID) -> uuid.UUID:
    """The replay run of ``original`` that ``message`` says was recorded queued, its events not acknowledged by Kafka
    (the console's alert, the API's detail), and how to retry it."""
    assert message.startswith("replay run "), message
    replay = uuid.UUID(message.split()[2])
    assert message.startswith(
        f"replay run {replay} of run {original} was recorded queued, but Kafka did not acknowledge its events "
        "(KafkaTimeoutError: "
    ), message
    assert "retrying with the same Idempotency-Key publishes them again" in message
    return replay


@dataclass
class Letters:
    letters: list[DeadLetter]

    def dead_letters(self) -> list[DeadLetter]:
        return self.letters


def _letters(run: uuid.UUID, members: int) -> Letters:
    """One dead letter of ``run`` with ``members`` refused members."""
    return Letters(
        [
            DeadLetter(
                reason="HTTP 400",
                source_topic="t",
                service="dispatcher",
                run_id=run,
                definition="nightly",
                batch_index=0,
                members=[{"id": i, "email": f"m{i}@example.com", "tier": "gold"} for i in range(1, members + 1)],
                at=datetime.now(UTC),
            )
        ]
    )


def _console(app: FastAPI) -> ConsoleContext:
    """The console's context (its app is the ConsoleGate's)."""
    gate: object = ConsoleGate
    console = next(m.kwargs["console"] for m in app.user_middleware if m.cls is gate)
    assert isinstance(console, FastAPI)
    context: ConsoleContext = console.state.console
    return context


def test_a_console_replay_kafka_does_not_acknowledge_names_its_replay_run_and_its_retry_publishes_that_run(
    broker: LocalKafka, admin: Admin
) -> None:
    with admin.api.client("operator") as client, signed_in(admin.api, "operator") as console:
        original, first = (uuid.UUID(client.post(RUNS).json()["run_id"]) for _ in range(2))
        assert client.post(f"/api/v1/runs/{first}/cancel").status_code == 200  # the run events' leader known
        # The original run's dead letters (read before anything is published: not what is tested here).
        context = _console(admin.api.app)
        context.replays = replace(context.replays, letters=lambda: _letters(original, 3))
        key = _hidden(console.page(f"/runs/{original}/replay"), "idempotency_key")
        assert key.startswith("console-")
        with frozen(broker):
            page = console.post(f"/runs/{original}/replay", {"idempotency_key": key})
        # The replay's confirmation again: the reason, the replay run recorded queued (a link), the same key.
        assert page.status_code == 503, page.text
        replay = unacknowledged_replay(_alert(page.text), original)
        assert f'<dd><a href="/console/runs/{replay}">{replay}</a></dd>' in page.text
        assert _hidden(page.text, "idempotency_key") == key
        assert f'action="/console/runs/{original}/replay"' in page.text
        recorded = client.get(f"/api/v1/runs/{replay}").json()
        assert (recorded["status"], recorded["trigger"], recorded["replay_of"]) == ("queued", "replay", str(original))
        # Sent again (the broker back): that replay run, its start published again, no second replay run.
        started = _events(admin, RunStarted, replay)
        retried = console.post(f"/runs/{original}/replay", {"idempotency_key": key})
        assert retried.status_code == 303, retried.text
        assert retried.headers["location"] == f"/console/runs/{replay}"
        assert _events(admin, RunStarted, replay) == started + 1
        replays = [run["run_id"] for run in client.get("/api/v1/runs").json() if run["replay_of"] == str(original)]
        assert replays == [str(replay)]


def test_the_api_document_says_how_a_cancel_kafka_did_not_acknowledge_is_retried(tmp_path: Path) -> None:
    with in_process_api(tmp_path) as api, api.client(None) as anonymous:
        cancel = anonymous.get("/openapi.json").json()["paths"]["/api/v1/runs/{run_id}/cancel"]["post"]
    assert "a run already cancelled: its cancellation published again" in cancel["summary"]
    unavailable = cancel["responses"]["503"]
    assert "a cancel by cancelling again" in unavailable["description"]
    assert unavailable["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


class Unreadable:
    """The dead letters' adapter with Kafka down, as it says it (:class:`shared.kafka.event_publisher.KafkaDeadLetters`:
    the consumer's bootstrap failed)."""

    def dead_letters(self) -> list[DeadLetter]:
        raise DeadLettersUnreadable("KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:9']")


def test_a_console_replay_whose_dead_letters_cannot_be_read_is_its_confirmation_again_nothing_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka down before anything is published: the dead letters are read first (before: an unexpected error)."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client, signed_in(api, "operator") as console:
            original = client.post(RUNS).json()["run_id"]
            context = _console(api.app)
            context.replays = replace(context.replays, letters=Unreadable)
            page = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-k1"})
            assert page.status_code == 503, page.text
            assert _alert(page.text) == (
                "the dead letters cannot be read now, no replay run was recorded: KafkaTimeoutError: Unable to "
                "bootstrap from ['127.0.0.1:9'] (the Idempotency-Key stays bound to this run's replay: retry with it)"
            )
            assert _hidden(page.text, "idempotency_key") == "console-k1"
            assert [run for run in client.get("/api/v1/runs").json() if run["replay_of"]] == []


def test_the_console_says_a_listing_is_busy_in_a_listings_words_and_a_replay_in_a_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many dead-letter reads as the admin process allows run now: the run's dead-letters page (a listing) says so
    and when to retry, without a replay's words; a replay says no replay run was recorded and its key stays bound
    (before: the page said "no replay run was recorded ... (with the same Idempotency-Key, if any)")."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    busy = (
        f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now (Kafka may be slow or down): retry in 10 s"
    )
    replays = DeadLetterReplays(Unreadable, max_record_bytes=1_000_000)
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client, signed_in(api, "operator") as console:
            original = client.post(RUNS).json()["run_id"]
            _console(api.app).replays = replays
            for _ in range(MAX_DEAD_LETTER_READS):  # the reads under way
                assert replays.reads.acquire(blocking=False)
            page = console.client.get(f"/console/runs/{original}/dead-letters")
            assert page.status_code == 503, page.text
            assert _warning(page.text) == busy  # before: "…: no replay run was recorded; retry in 10 s (with the…"
            replay = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-busy"})
            assert replay.status_code == 503, replay.text
            assert _alert(replay.text) == (
                f"{busy}; no replay run was recorded (the Idempotency-Key stays bound to this run's replay: retry with "
                "it)"
            )
            assert [run for run in client.get("/api/v1/runs").json() if run["replay_of"]] == []


def _warning(html: str) -> str:
    return unescape(html.split('<p class="warning">', 1)[1].split("</p>", 1)[0])


@contextmanager
def _replaying(tmp_path: Path) -> Iterator[tuple[TestClient, Console, uuid.UUID, ConsoleContext]]:
    """The API's client as an operator, the console signed in as one, a run of nightly whose two members were
    dead-lettered, and the console's context (no broker: the in-process API's recording publisher)."""
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client, signed_in(api, "operator") as console:
            original = uuid.UUID(client.post(RUNS).json()["run_id"])
            context = _console(api.app)
            context.replays = replace(context.replays, letters=lambda: _letters(original, 2))
            yield client, console, original, context


def test_a_console_replay_retry_of_a_replay_that_ended_unfinished_is_refused_409_with_a_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay run of the form's key failed as stuck: the confirmation again, 409, the reason, a new key (before:
    a redirect to the failed replay run as if it had started); submitting that key replays the dead letters."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with _replaying(tmp_path) as (_client, console, original, context):
        first = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-k1"})
        assert first.status_code == 303, first.text
        replay = uuid.UUID(first.headers["location"].rsplit("/", 1)[1])
        context.admin.runs.fold_run_event(RunFailed(run_id=replay, definition="nightly", reason="stuck"))
        page = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-k1"})
        assert page.status_code == 409, page.text
        assert _alert(page.text) == (
            f"replay run {replay} of run {original}, the replay of this Idempotency-Key, ended failed before its "
            f"extraction was complete: use a new key to replay run {original} again"
        )
        key = _hidden(page.text, "idempotency_key")
        assert key.startswith("console-")
        assert key != "console-k1"
        again = console.post(f"/runs/{original}/replay", {"idempotency_key": key})
        assert again.status_code == 303, again.text
        assert again.headers["location"] != first.headers["location"]


def test_a_console_replay_whose_key_another_request_publishes_is_a_503_with_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay run of the form's key is being published by another request (a double click, another tab) longer
    than the console waits: the confirmation again, 503, the reason and the same key (before: the request held a
    worker up to the lease, polling, then published it a second time)."""
    import shared.application.replay as replay_module

    monkeypatch.setattr(replay_module, "CLAIM_WAIT_SECONDS", 0.3, raising=False)
    monkeypatch.setattr(replay_module, "PUBLICATION_LEASE_SECONDS", 2.0)  # old code: took the claim over after it
    monkeypatch.setattr(replay_module, "_CLAIM_POLL_SECONDS", 0.05)
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")

    class BatchesUnacknowledged(RecordingPublisher):
        def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
            raise PublishFailed("the member batches on exports.member-batches", "KafkaTimeoutError")

    with _replaying(tmp_path) as (client, console, original, context):
        healthy, context.admin.publisher = context.admin.publisher, BatchesUnacknowledged()
        first = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-k1"})
        assert first.status_code == 503, first.text
        (replay,) = [uuid.UUID(run["run_id"]) for run in client.get("/api/v1/runs").json() if run["replay_of"]]
        context.admin.publisher = healthy
        assert context.admin.runs.claim_replay_publication(replay, "another request", 120)
        page = console.post(f"/runs/{original}/replay", {"idempotency_key": "console-k1"})
        assert page.status_code == 503, page.text
        assert _alert(page.text) == (
            f"replay run {replay} of run {original} is being published by another request (the same "
            "Idempotency-Key): retry with the same key"
        )
        assert _hidden(page.text, "idempotency_key") == "console-k1"
