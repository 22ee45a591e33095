"""``POST /api/v1/runs/{run_id}/replay``: a run's dead letters replayed through the admin API, as the console and
exportctl replay them (:func:`shared.application.replay.replay_dead_letters`), under an Idempotency-Key as they pass
it: 202 with the replay run and its ``Location``, a retry with the same key the same replay run, and each refusal
with the status and reason text the console and exportctl say (before: no such route, 404 "Not Found").

Against the admin API as a real process (a SQLite catalog, the session's Kafka, dead letters on its dead-letter
topic); what needs Kafka to fail in the middle of a replay (a frozen broker after the dead letters are read) or a
concurrent request, in-process over a real producer to the freezable broker, as the console's replay tests do.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from devtools.kafka_broker import LocalKafka
from devtools.processes import free_port, wait_until
from shared.catalog import CatalogStores, make_engine
from shared.domain.attempts import CapturedAttempt
from shared.events import (
    RUN_EVENTS_RECORD_ADAPTER,
    AnyRunEvent,
    DeadLetter,
    Priority,
    RunFailed,
    RunRequested,
    RunStarted,
)
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.admin_app import RecordingPublisher, in_process_api
from tests.admin_server import AdminServer, admin_server
from tests.integration.test_admin_api import _seed
from tests.integration.test_cancel_replay_kafka_unavailable import (  # noqa: F401 - admin, broker: fixtures
    RUNS,
    Admin,
    _alert,
    _console,
    _events,
    _hidden,
    _letters,
    admin,
    broker,
    frozen,
    unacknowledged_replay,
)
from tests.integration.test_console_fields import _csrf
from tests.kafka_helpers import produce, read_to_end

pytestmark = pytest.mark.integration

PROBLEMS = "https://member-export.dev/problems/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[AdminServer]:
    """The admin API as a process on a SQLite catalog and the session's broker, its objects seeded (one for the
    module: each test replays runs of its own)."""
    directory = tmp_path_factory.mktemp("admin-replay")
    store = f"sqlite:///{directory / 'members.db'}"
    engine = make_engine(store)
    create_demo_members(engine, 25)
    engine.dispose()
    with admin_server(directory, f"sqlite:///{directory / 'catalog.db'}", kafka_bootstrap, store) as started:
        _seed(started)
        yield started


def _settings(server: AdminServer, kafka_bootstrap: str) -> CommonSettings:
    """The server's topics."""
    return CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=server.topic_prefix, metrics_port=0)


def _run(server: AdminServer, key: str | None = None) -> uuid.UUID:
    """A run of the seeded definition, requested by an operator (recorded queued: no extractor runs here)."""
    with server.client("operator") as api:
        answer = api.post(
            "/api/v1/export-definitions/gold-to-partner/runs", headers={"Idempotency-Key": key} if key else {}
        )
    assert answer.status_code == 202, answer.text
    return uuid.UUID(answer.json()["run_id"])


def _dead_letter(
    server: AdminServer, kafka_bootstrap: str, run_id: uuid.UUID, members: int, definition: str = "gold-to-partner"
) -> None:
    """A dead letter of ``run_id`` on the server's dead-letter topic: ``members`` members the partner refused."""
    (letter,) = _letters(run_id, members).letters  # the console's replay tests' dead letter
    letter = letter.model_copy(update={"definition": definition})
    topic = _settings(server, kafka_bootstrap).topics.dead_letters
    produce(kafka_bootstrap, topic, [(str(run_id), letter.model_dump_json().encode())])


def _replay(server: AdminServer, run_id: uuid.UUID, key: str | None, who: str = "operator") -> httpx.Response:
    with server.client(who) as api:
        return api.post(f"/api/v1/runs/{run_id}/replay", headers={"Idempotency-Key": key} if key else {})


def _problem(answer: httpx.Response, status: int, slug: str) -> str:
    """The problem's detail, once its status, media type and type are ``status`` and ``slug``."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["type"] == PROBLEMS + slug, body
    detail: str = body["detail"]
    return detail


def _replays_of(server: AdminServer, run_id: uuid.UUID) -> list[str]:
    with server.client("operator") as api:
        return [run["run_id"] for run in api.get("/api/v1/runs").json() if run["replay_of"] == str(run_id)]


def _started_events(server: AdminServer, kafka_bootstrap: str, run_id: uuid.UUID) -> int:
    values = read_to_end(kafka_bootstrap, _settings(server, kafka_bootstrap).topics.run_events)
    events = map(RUN_EVENTS_RECORD_ADAPTER.validate_json, values)
    return sum(isinstance(event, RunStarted) and event.run_id == run_id for event in events)


def test_a_replay_is_202_with_its_replay_run_and_location_and_a_retry_with_the_same_key_is_that_run(
    server: AdminServer, kafka_bootstrap: str
) -> None:
    original = _run(server)
    _dead_letter(server, kafka_bootstrap, original, 3)
    first = _replay(server, original, "api-replay-1")
    assert first.status_code == 202, first.text  # before: 404, no such route
    replay = first.json()
    assert (replay["trigger"], replay["replay_of"], replay["status"]) == ("replay", str(original), "queued")
    assert first.headers["location"] == replay["url"]
    assert replay["url"].endswith(f"/api/v1/runs/{replay['run_id']}")
    # Its events on Kafka: the replay run started, its 3 members in 2 batches (the template's batch size 2).
    batches = read_to_end(kafka_bootstrap, _settings(server, kafka_bootstrap).topics.member_batches_for("normal"))
    assert _started_events(server, kafka_bootstrap, uuid.UUID(replay["run_id"])) == 1
    # The retry (a lost answer, a double click): the same replay run, nothing published again (all acknowledged).
    again = _replay(server, original, "api-replay-1")
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == replay["run_id"]
    assert again.headers["location"] == first.headers["location"]
    assert _replays_of(server, original) == [replay["run_id"]]
    assert _started_events(server, kafka_bootstrap, uuid.UUID(replay["run_id"])) == 1
    assert (
        read_to_end(kafka_bootstrap, _settings(server, kafka_bootstrap).topics.member_batches_for("normal")) == batches
    )
    # Another key (or none) is another replay.
    other = _replay(server, original, None)
    assert other.status_code == 202, other.text
    assert other.json()["run_id"] != replay["run_id"]


def test_a_scoped_operator_replays_its_units_run_then_reads_and_cancels_the_replay_run(
    server: AdminServer, kafka_bootstrap: str
) -> None:
    """The replay run is recorded in the replayed run's business unit and definition (before: in none, so the
    replay happened, recorded and published, and its scoped caller got 404 naming the replay run)."""
    definition = _seed(server, business_unit="emea", suffix=" emea replay")["definition"]
    with server.client("emea-operator") as api:
        requested = api.post(f"/api/v1/export-definitions/{definition}/runs")
        assert requested.status_code == 202, requested.text
        original = uuid.UUID(requested.json()["run_id"])
        _dead_letter(server, kafka_bootstrap, original, 3, definition)
        answer = api.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "emea-replay-1"})
        assert answer.status_code == 202, answer.text  # before: 404 "run <the replay run> does not exist"
        replay = answer.json()
        assert (replay["trigger"], replay["replay_of"], replay["definition"]) == ("replay", str(original), definition)
        assert api.get(answer.headers["location"]).status_code == 200
        listed = [run["run_id"] for run in api.get(f"/api/v1/export-definitions/{definition}/runs").json()]
        assert replay["run_id"] in listed
        again = api.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "emea-replay-1"})
        assert (again.status_code, again.json()["run_id"]) == (202, replay["run_id"])
        cancelled = api.post(f"/api/v1/runs/{replay['run_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    assert _replays_of(server, original) == [replay["run_id"]]


def test_a_replay_of_a_run_whose_definition_was_re_created_is_recorded_under_the_definition_it_runs_through(
    server: AdminServer, kafka_bootstrap: str
) -> None:
    """The definition was deleted and created again under its name (now in "emea"): the replay runs through the
    current one, and is recorded under it, its id and unit, as a run requested now would be (before: under the
    deleted definition's id and old unit, so its attempts were not the current definition's and the emea operator
    could not see the replay run)."""
    names = _seed(server, suffix=" recreated")
    name = names["definition"]
    with server.client() as api:
        original = uuid.UUID(api.post(f"/api/v1/export-definitions/{name}/runs").json()["run_id"])
        kept = api.get(f"/api/v1/export-definitions/{name}").json()
        assert api.delete(f"/api/v1/export-definitions/{name}").status_code == 204
        fields = ("label", "query", "template", "schedule")
        again = api.post("/api/v1/export-definitions", json={k: kept[k] for k in fields} | {"business_unit": "emea"})
        assert (again.status_code, again.json()["name"]) == (201, name), again.text
        _dead_letter(server, kafka_bootstrap, original, 3, name)
        answer = api.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": f"recreated-{original}"})
        assert answer.status_code == 202, answer.text
        replay = uuid.UUID(answer.json()["run_id"])
    catalog = CatalogStores.from_url(server.catalog_url)
    try:
        catalog.attempts.add([_attempt(name, names["profile"], replay)], keep=10)
    finally:
        catalog.close()
    with server.client() as api:
        attempts = api.get(f"/api/v1/export-definitions/{name}/attempts").json()
    assert [attempt["run_id"] for attempt in attempts] == [str(replay)]  # before: []
    with server.client("emea-operator") as api:
        assert api.get(f"/api/v1/runs/{replay}").status_code == 200  # before: 404 (the deleted definition's unit)


def _attempt(definition: str, profile: str, run_id: uuid.UUID) -> CapturedAttempt:
    """One successful attempt of ``run_id``'s first batch, as the dispatcher's inspector keeps it."""
    return CapturedAttempt(
        definition=definition,
        profile=profile,
        run_id=run_id,
        batch_index=0,
        attempt=1,
        at=datetime.now(UTC),
        method="POST",
        url="https://partner.example.com/v2/members",
        request_headers={},
        request_body="[]",
        request_bytes=2,
        status=200,
        success=True,
        latency_ms=1.0,
        response_headers={},
        response_body="",
    )


def test_a_replay_is_refused_with_the_status_and_reason_the_console_and_exportctl_say(
    server: AdminServer, kafka_bootstrap: str
) -> None:
    unknown = uuid.uuid4()
    assert _problem(_replay(server, unknown, "k"), 404, "not-found") == f"run {unknown} does not exist"
    original = _run(server)
    _dead_letter(server, kafka_bootstrap, original, 2)
    assert _problem(_replay(server, original, "k", who="viewer"), 403, "forbidden") == "role 'viewer' may not run"
    bare = _run(server)  # no dead letters
    assert _problem(_replay(server, bare, None), 422, "nothing-to-replay") == (
        f"run {bare} has no dead-lettered members to replay"
    )
    # A key a run request used: a client error, not that run.
    _run(server, key="used-by-a-run")
    reused = _problem(_replay(server, original, "used-by-a-run"), 422, "idempotency-key-reused")
    assert "a replay of another run, or a run request" in reused
    # The key's replay run ended before its extraction was complete (failed as stuck): 409, a new key replays.
    started = _replay(server, original, "api-replay-ended")
    assert started.status_code == 202, started.text
    replay = uuid.UUID(started.json()["run_id"])
    stores = CatalogStores.from_url(server.catalog_url)
    try:
        stores.runs.fold_run_event(RunFailed(run_id=replay, definition="gold-to-partner", reason="stuck"))
    finally:
        stores.close()
    assert _problem(_replay(server, original, "api-replay-ended"), 409, "replay-ended") == (
        f"replay run {replay} of run {original}, the replay of this Idempotency-Key, ended failed before its "
        f"extraction was complete: use a new key to replay run {original} again"
    )
    fresh = _replay(server, original, "api-replay-ended-2")
    assert fresh.status_code == 202, fresh.text
    assert fresh.json()["run_id"] != str(replay)
    # The header's bound, as the run request's.
    long_key = _problem(_replay(server, original, "k" * 201), 422, "invalid-request")
    assert "idempotency-key" in long_key
    # An empty key is refused naming the header, on the replay and on the run request (before: no key, so two calls
    # with "" were two replays). A blank one arrives empty (the server strips a header's whitespace).
    with server.client("operator") as api:
        for path in (f"/api/v1/runs/{original}/replay", "/api/v1/export-definitions/gold-to-partner/runs"):
            answer = api.post(path, headers={"Idempotency-Key": ""})
            assert "idempotency-key" in _problem(answer, 422, "invalid-request"), path


def test_a_replay_kafka_does_not_acknowledge_is_a_503_naming_its_replay_run_and_its_retries_are_that_run(
    broker: LocalKafka,  # noqa: F811 - the fixtures imported above
    admin: Admin,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka frozen after the dead letters are read: 503 ``kafka-unavailable`` naming the replay run recorded queued;
    the same key with other dead letters: 409 ``dead-letters-changed``; while another request publishes it: 503
    ``replay-being-published``; then the same key publishes that replay run (202), no second one."""
    import shared.application.replay as replay_module
    from services.admin.dependencies import DeadLetterReplays

    monkeypatch.setattr(replay_module, "CLAIM_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(replay_module, "_CLAIM_POLL_SECONDS", 0.05)
    context = admin.api.app.state.context
    with admin.api.client("operator") as client:
        original, first = (uuid.UUID(client.post(RUNS).json()["run_id"]) for _ in range(2))
        assert client.post(f"/api/v1/runs/{first}/cancel").status_code == 200  # the run events' leader known
        context.replays = DeadLetterReplays(lambda: _letters(original, 3), 900_000)
        with frozen(broker):
            failed = client.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "api-k1"})
        replay = unacknowledged_replay(_problem(failed, 503, "kafka-unavailable"), original)
        recorded = client.get(f"/api/v1/runs/{replay}").json()
        assert (recorded["status"], recorded["trigger"], recorded["replay_of"]) == ("queued", "replay", str(original))
        # The same key, other dead letters (its batches not acknowledged): 409, as the console says it.
        context.replays = DeadLetterReplays(lambda: _letters(original, 4), 900_000)
        changed = _problem(
            client.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "api-k1"}),
            409,
            "dead-letters-changed",
        )
        assert changed.startswith(f"the dead letters of run {original} changed since replay run {replay} was recorded")
        # Another request publishes it now (its claim held): 503, retry with the same key.
        context.replays = DeadLetterReplays(lambda: _letters(original, 3), 900_000)
        assert context.runs.claim_replay_publication(replay, "another request", 120)
        busy = _problem(
            client.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "api-k1"}),
            503,
            "replay-being-published",
        )
        assert busy == (
            f"replay run {replay} of run {original} is being published by another request (the same "
            "Idempotency-Key): retry with the same key"
        )
        context.runs.release_replay_publication(replay, "another request")
        # The retry: that replay run, its start published again, no second replay run.
        started = _events(admin, RunStarted, replay)
        retried = client.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "api-k1"})
        assert retried.status_code == 202, retried.text
        assert retried.json()["run_id"] == str(replay)
        assert retried.headers["location"] == f"/api/v1/runs/{replay}"
        assert _events(admin, RunStarted, replay) == started + 1
        replays = [run["run_id"] for run in client.get("/api/v1/runs").json() if run["replay_of"] == str(original)]
        assert replays == [str(replay)]


def test_a_replay_whose_dead_letters_cannot_be_read_is_a_503_no_replay_run_its_key_bound(tmp_path: Path) -> None:
    """Kafka down (nothing listens): the dead letters' adapter says so as one error (before: the route caught kafka-
    python's, builtin and OS errors around the whole use case), answered 503 with ``Retry-After``, logged at warning,
    and the detail says what holds: no replay run, the key bound to this run's replay (before: "nothing was recorded",
    and the key was)."""
    from services.admin.dependencies import DeadLetterReplays
    from shared.kafka.event_publisher import KafkaDeadLetters
    from tests.admin_app import seed

    down = CommonSettings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", metrics_port=0)
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            original, other = (client.post(RUNS).json()["run_id"] for _ in range(2))
            api.app.state.context.replays = DeadLetterReplays(lambda: KafkaDeadLetters(down, 1.0), 900_000)
            with capture_logs() as logs:
                answer = client.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": "api-k1"})
            assert _problem(answer, 503, "dead-letters-unreadable") == (
                "the dead letters cannot be read now, no replay run was recorded: KafkaTimeoutError: Unable to "
                f"bootstrap from ['{down.kafka_bootstrap_servers}'] (the Idempotency-Key stays bound to this run's "
                "replay: retry with it)"
            )
            assert answer.headers["retry-after"] == "10"
            (logged,) = [entry for entry in logs if entry["event"] == "dead-letters-unreadable"]
            assert (logged["log_level"], logged["replay_of"]) == ("warning", original)
            assert logged["operation"] == "POST /api/v1/runs/{run_id}/replay"
            assert [run for run in client.get("/api/v1/runs").json() if run["replay_of"]] == []
            # As the detail says: the key is this run's replay's, another run's replay with it is refused.
            reused = client.post(f"/api/v1/runs/{other}/replay", headers={"Idempotency-Key": "api-k1"})
            _problem(reused, 422, "idempotency-key-reused")


class FrozenRead:
    """Dead-letter reads that hang until released, as on a frozen broker; counts the reads under way."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.reading = 0
        self._lock = threading.Lock()

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            self.reading += 1
        self.released.wait(60)
        return []


def test_replays_on_a_frozen_broker_take_a_few_threads_and_the_rest_are_503_busy_while_healthz_answers(
    tmp_path: Path,
) -> None:
    """45 replays at once, their dead-letter reads hanging: ``MAX_DEAD_LETTER_READS`` hold a request thread, the
    others are answered 503 ``dead-letters-busy`` with ``Retry-After`` at once, and ``/healthz`` answers (before:
    every replay held one of the API's 40 threads, /healthz waited 28 s behind them)."""
    from services.admin.dependencies import MAX_DEAD_LETTER_READS, DeadLetterReplays
    from tests.admin_app import seed
    from tests.integration.test_kafka_unavailable import serving

    frozen = FrozenRead()
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            original = client.post(RUNS).json()["run_id"]
        api.app.state.context.replays = DeadLetterReplays(lambda: frozen, 900_000)
        answers: list[httpx.Response] = []
        with serving(api.app) as url, httpx.Client(base_url=url, headers=api.headers("operator"), timeout=60) as http:

            def replay(key: str) -> None:
                answers.append(http.post(f"/api/v1/runs/{original}/replay", headers={"Idempotency-Key": key}))

            threads = [threading.Thread(target=replay, args=(f"frozen-{n}",)) for n in range(45)]
            try:
                for thread in threads:
                    thread.start()
                wait_until(
                    lambda: frozen.reading == MAX_DEAD_LETTER_READS and len(answers) == 45 - MAX_DEAD_LETTER_READS,
                    timeout=30,
                    what="the reads under way and the other replays answered",
                )
                health = httpx.get(f"{url}/healthz", timeout=5)  # before: ReadTimeout (28 s behind the replays)
                assert health.status_code == 200, health.text
                for busy in answers:
                    assert _problem(busy, 503, "dead-letters-busy").startswith(
                        f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now"
                    )
                    assert busy.headers["retry-after"] == "10"
            finally:
                frozen.released.set()
                for thread in threads:
                    thread.join(60)
        # The reads under way end as reads do (no dead letters here: nothing to replay), their threads given back.
        assert len(answers) == 45
        assert [a.status_code for a in answers].count(422) == MAX_DEAD_LETTER_READS
        assert frozen.reading == MAX_DEAD_LETTER_READS


class FrozenPublication:
    """The admin's publisher with Kafka frozen after the dead letters were read: each publication of a run's events or
    member batches hangs until released, as a producer waiting for a frozen broker's acknowledgement; then recorded.
    Counts the publications hanging now."""

    def __init__(self, recording: RecordingPublisher) -> None:
        self.recording = recording
        self.batches: list[str] = []  # the member batches' keys, ``<replay run>:<batch index>``
        self.released = threading.Event()
        self.hanging = 0
        self._lock = threading.Lock()

    def _hang(self) -> None:
        with self._lock:
            self.hanging += 1
        self.released.wait(60)
        with self._lock:
            self.hanging -= 1

    def publish_run_request(self, request: RunRequested) -> None:
        self._hang()
        self.recording.publish_run_request(request)

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        self._hang()
        self.recording.publish_run_events(events)

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        self._hang()
        with self._lock:
            self.batches.extend(key for key, _ in batches)


@contextmanager
def _console_session(url: str, token: str) -> Iterator[tuple[httpx.Client, str]]:
    """A console session on the server at ``url`` (signed in with ``token``) and its CSRF token."""
    with httpx.Client(base_url=url, timeout=60) as session:
        form = session.get("/console/sign-in")
        signed = session.post("/console/sign-in", data={"csrf_token": _csrf(form.text), "token": token})
        assert signed.status_code == 303, signed.text
        yield session, _csrf(session.get("/console/exports").text)


def test_replays_whose_publication_hangs_hold_their_read_until_answered_and_one_more_is_503_busy_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka frozen once the dead letters are read (their publication hangs): ``MAX_DEAD_LETTER_READS`` replays (the
    API's and the console's) hold their read until they are answered, so one more is answered 503
    ``dead-letters-busy`` at once in the API and in the console (no replay run recorded, its key bound), and
    ``/healthz`` answers; released, the replays in flight end as replays do (202, the console's 303), each replay run
    published once (before: a replay gave its read back once Kafka had given the dead letters, so the next one read
    them too and hung in its publication: replays could hold every request thread)."""
    from services.admin.dependencies import MAX_DEAD_LETTER_READS
    from tests.admin_app import seed
    from tests.integration.test_kafka_unavailable import serving

    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http
    busy = (
        f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now (Kafka may be slow or down): retry in "
        "10 s; no replay run was recorded (the Idempotency-Key stays bound to this run's replay: retry with it)"
    )
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            original, other = (uuid.UUID(client.post(RUNS).json()["run_id"]) for _ in range(2))
        context = api.app.state.context
        # The API's and the console's replays read the same dead letters within one bound, as install() wires them.
        context.replays = _console(api.app).replays = replace(context.replays, letters=lambda: _letters(original, 3))
        publication = FrozenPublication(api.publisher)
        context.publisher = publication
        answers: dict[str, httpx.Response] = {}
        with (
            serving(api.app) as url,
            httpx.Client(base_url=url, headers=api.headers("operator"), timeout=60) as http,
            _console_session(url, api.tokens["operator"]) as (console, csrf),
        ):

            def replay(key: str, timeout: float = 60) -> httpx.Response:
                path = f"/api/v1/runs/{original}/replay"
                return http.post(path, headers={"Idempotency-Key": key}, timeout=timeout)

            def console_replay(key: str, timeout: float = 60) -> httpx.Response:
                fields = {"csrf_token": csrf, "idempotency_key": key}
                return console.post(f"/console/runs/{original}/replay", data=fields, timeout=timeout)

            def in_flight(send: Callable[[str], httpx.Response], key: str) -> threading.Thread:
                return threading.Thread(target=lambda: answers.update({key: send(key)}))

            threads = [in_flight(replay, "api-1"), in_flight(replay, "api-2"), in_flight(console_replay, "console-1")]
            try:
                for thread in threads:
                    thread.start()
                wait_until(
                    lambda: publication.hanging == MAX_DEAD_LETTER_READS,
                    timeout=30,
                    what="the replays in flight hanging in their publication",
                )
                # Before: these read the dead letters too, recorded a replay run and hung (a ReadTimeout here).
                refused = replay("api-4", timeout=10)
                assert _problem(refused, 503, "dead-letters-busy") == busy
                assert refused.headers["retry-after"] == "10"
                page = console_replay("console-4", timeout=10)
                assert page.status_code == 503, page.text
                assert _alert(page.text) == busy
                assert _hidden(page.text, "idempotency_key") == "console-4"  # the same key to retry with
                health = httpx.get(f"{url}/healthz", timeout=10)
                assert health.status_code == 200, health.text
                assert not answers  # the replays in flight still hang
            finally:
                publication.released.set()
                for thread in threads:
                    thread.join(60)
            # Released: the replays in flight answered as replays are, each a replay run of its own.
            assert sorted(answers) == ["api-1", "api-2", "console-1"]
            started = {key: answers[key].json() for key in ("api-1", "api-2")}
            for body in started.values():
                assert (body["status"], body["replay_of"], body["members"], body["batches"]) == (
                    "queued",
                    str(original),
                    3,
                    2,
                )
            assert answers["console-1"].status_code == 303, answers["console-1"].text
            runs = {body["run_id"] for body in started.values()}
            runs.add(answers["console-1"].headers["location"].rsplit("/", 1)[1])
            assert len(runs) == 3
            # The refused replays recorded nothing; the refused API key is bound to this run's replay, as it says.
            recorded = http.get("/api/v1/runs").json()
            assert {run["run_id"] for run in recorded if run["replay_of"] == str(original)} == runs
            reused = http.post(f"/api/v1/runs/{other}/replay", headers={"Idempotency-Key": "api-4"})
            _problem(reused, 422, "idempotency-key-reused")
            retried = replay("api-4")
            assert retried.status_code == 202, retried.text
            runs.add(retried.json()["run_id"])
    # Each replay run published once, whole: its start, its two batches, its extraction's end.
    events = [(type(event).__name__, str(event.run_id)) for event in api.publisher.run_events]
    for run in runs:
        assert events.count(("RunStarted", run)) == events.count(("ExtractionCompleted", run)) == 1, run
    assert sorted(publication.batches) == sorted(f"{run}:{index}" for run in runs for index in (0, 1))


def test_while_every_read_is_taken_a_finished_replays_retry_is_its_replay_run_and_a_double_clicks_second_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many dead-letter reads run as the admin process allows: a retry of a replay whose events Kafka all
    acknowledged is its replay run (the API's 202, the console's 303 to it), answered from the catalog (before: 503
    ``dead-letters-busy`` "no replay run was recorded"); a console double click whose first click publishes now and
    whose second finds no read free is a 503 naming the replay run the first recorded, the same key to retry with
    (before: "no replay run was recorded"), and the first ends as a replay does, one replay run."""
    from services.admin.dependencies import MAX_DEAD_LETTER_READS
    from tests.admin_app import seed
    from tests.integration.test_kafka_unavailable import serving

    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http
    busy = (
        f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now (Kafka may be slow or down): retry in 10 s"
    )
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            original = uuid.UUID(client.post(RUNS).json()["run_id"])
        context = api.app.state.context
        context.replays = _console(api.app).replays = replace(context.replays, letters=lambda: _letters(original, 3))
        reads = context.replays.reads
        with (
            serving(api.app) as url,
            httpx.Client(base_url=url, headers=api.headers("operator"), timeout=60) as http,
            _console_session(url, api.tokens["operator"]) as (console, csrf),
        ):

            def console_replay(key: str, timeout: float = 60) -> httpx.Response:
                fields = {"csrf_token": csrf, "idempotency_key": key}
                return console.post(f"/console/runs/{original}/replay", data=fields, timeout=timeout)

            path = f"/api/v1/runs/{original}/replay"
            first = http.post(path, headers={"Idempotency-Key": "api-done"})
            assert first.status_code == 202, first.text
            finished = first.json()["run_id"]
            held = 0
            try:
                while held < MAX_DEAD_LETTER_READS:  # the reads of others under way
                    assert reads.acquire(blocking=False)
                    held += 1
                again = http.post(path, headers={"Idempotency-Key": "api-done"}, timeout=10)
                assert again.status_code == 202, again.text  # before: 503 dead-letters-busy
                assert (again.json()["run_id"], again.headers["location"]) == (finished, first.headers["location"])
                page = console_replay("api-done", timeout=10)
                assert page.status_code == 303, page.text
                assert page.headers["location"].endswith(f"/runs/{finished}")
                # A double click: its first click holds a read while Kafka, frozen, does not acknowledge its start.
                reads.release()
                held -= 1
                publication = FrozenPublication(api.publisher)
                context.publisher = publication
                clicks: dict[str, httpx.Response] = {}
                click = threading.Thread(target=lambda: clicks.update(first=console_replay("console-double")))
                click.start()
                try:
                    wait_until(lambda: publication.hanging == 1, timeout=30, what="the first click publishing")
                    (recorded,) = [
                        run["run_id"]
                        for run in http.get("/api/v1/runs").json()
                        if run["replay_of"] == str(original) and run["run_id"] != finished
                    ]
                    second = console_replay("console-double", timeout=10)
                    assert second.status_code == 503, second.text
                    assert _alert(second.text) == (
                        f"{busy}; replay run {recorded} was recorded by an earlier request under this key: retry with "
                        "the same key"
                    )
                    assert _hidden(second.text, "idempotency_key") == "console-double"
                finally:
                    publication.released.set()
                    click.join(60)
                assert clicks["first"].status_code == 303, clicks["first"].text
                assert clicks["first"].headers["location"].endswith(f"/runs/{recorded}")
            finally:
                for _ in range(held):
                    reads.release()
            replays = [run["run_id"] for run in http.get("/api/v1/runs").json() if run["replay_of"] == str(original)]
            assert sorted(replays) == sorted([finished, recorded])
    assert sorted(publication.batches) == [f"{recorded}:0", f"{recorded}:1"]


def test_the_api_document_says_what_a_replay_answers(tmp_path: Path) -> None:
    with in_process_api(tmp_path) as api, api.client(None) as anonymous:
        replay = anonymous.get("/openapi.json").json()["paths"]["/api/v1/runs/{run_id}/replay"]["post"]
    assert replay["operationId"] == "replay_run"
    assert {"202", "401", "403", "404", "409", "422", "503"} <= set(replay["responses"])
    assert "Location" in replay["responses"]["202"]["headers"]
    (key,) = [p for p in replay["parameters"] if p["in"] == "header"]
    assert (key["name"], key["schema"]["anyOf"][0]["maxLength"]) == ("idempotency-key", 200)
    slugs = ("dead-letters-changed", "replay-ended", "replay-being-published", "kafka-unavailable")
    for slug in (*slugs, "dead-letters-unreadable", "dead-letters-busy", "dead-letters-unavailable"):
        assert slug in replay["description"], slug
    # What holds the read: past the key's checks, its publication included (before: only while Kafka gave them).
    assert (
        "a replay holding one from its key's checks through its read, its record and its publication included"
        in (replay["description"])
    )
    # Refused busy, what the key's retry finds: nothing recorded, or the replay run an earlier request recorded.
    assert "when an earlier request under the key recorded it, that replay run named" in replay["description"]
