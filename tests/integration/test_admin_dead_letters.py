"""The dead letters through the admin API: ``GET /api/v1/dead-letters`` (grouped as ``exportctl dead-letters list``
prints them, scoped, bounded as a replay's read), exportctl's ``dead-letters list`` and ``replay`` through it (before:
"works on the catalog directly", exit 2), and the console's dead-letters page of a run answering 503 when it could
not read them (before: 200, the page showing the error).

Against the admin API as a real process (a SQLite catalog, the session's Kafka, dead letters on its dead-letter
topic) and exportctl as a process; what needs Kafka unreadable or every read under way, in-process (the reads
replaced, as the replay's tests do), exportctl against it over a real HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from services.admin.dependencies import MAX_DEAD_LETTER_READS, DeadLetterReplays
from shared.catalog import CatalogStores
from shared.events import BatchOutcome, DeadLetter, ExtractionCompleted, RefusedMember, RunStarted, Trigger
from tests.admin_app import in_process_api, seed
from tests.admin_server import AdminServer
from tests.integration.test_admin_api import _seed
from tests.integration.test_admin_replay import (  # noqa: F401 - server: the fixture (an admin process of this module)
    _dead_letter,
    _problem,
    _run,
    _settings,
    server,
)
from tests.integration.test_cancel_replay_kafka_unavailable import RUNS, Unreadable, _replaying, _warning
from tests.integration.test_kafka_unavailable import serving
from tests.kafka_helpers import produce

pytestmark = pytest.mark.integration

LIST = "/api/v1/dead-letters"
BUSY = f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now (Kafka may be slow or down): retry in 10 s"
UNREADABLE = "the dead letters cannot be read now: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:9']"


def exportctl(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={**os.environ, "EXPORTCTL_CONFIG": "/nonexistent/exportctl.yaml", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def through_api(url: str, token: str) -> dict[str, str]:
    """exportctl's environment through the admin API at ``url`` with ``token`` (no catalog, no Kafka of its own)."""
    return {"EXPORT_API_URL": url, "EXPORT_API_TOKEN": token}


def as_(admin: AdminServer, who: str) -> dict[str, str]:
    return through_api(admin.url, admin.tokens[who])


def on_catalog(admin: AdminServer, kafka_bootstrap: str) -> dict[str, str]:
    """exportctl's environment on the server's catalog and topics directly."""
    return {
        "EXPORT_CATALOG_URL": admin.catalog_url,
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EXPORT_TOPIC_PREFIX": admin.topic_prefix,
        "EXPORT_METRICS_PORT": "0",
    }


def _groups(admin: AdminServer, who: str = "admin", **params: str) -> dict[str, Any]:
    with admin.client(who) as api:
        answer = api.get(LIST, params=params)
    assert answer.status_code == 200, answer.text  # before: 404, no such route
    body: dict[str, Any] = answer.json()
    return body


def _unreadable_record(admin: AdminServer, kafka_bootstrap: str, service: str) -> None:
    """A record ``service`` could not read, dead-lettered (no run, no definition)."""
    letter = DeadLetter(reason="invalid JSON", source_topic="t", service=service, payload="{", at=datetime.now(UTC))
    produce(
        kafka_bootstrap,
        _settings(admin, kafka_bootstrap).topics.dead_letters,
        [(service, letter.model_dump_json().encode())],
    )


def test_the_dead_letters_are_listed_grouped_filtered_and_scoped(
    server: AdminServer,  # noqa: F811 - the fixture imported above
    kafka_bootstrap: str,
) -> None:
    first, second = _run(server), _run(server)
    _dead_letter(server, kafka_bootstrap, first, 3)
    _dead_letter(server, kafka_bootstrap, first, 2)  # the same run and reason: one group of 5 members
    _dead_letter(server, kafka_bootstrap, second, 1)
    service = f"svc-{uuid.uuid4().hex[:6]}"
    _unreadable_record(server, kafka_bootstrap, service)
    emea = _seed(server, business_unit="emea", suffix=" emea dead letters")["definition"]
    with server.client("emea-operator") as api:
        in_emea = uuid.UUID(api.post(f"/api/v1/export-definitions/{emea}/runs").json()["run_id"])
    _dead_letter(server, kafka_bootstrap, in_emea, 2, emea)

    listed = _groups(server, "viewer", run=str(first))
    assert listed == {
        "letters": 2,
        "groups": [
            {
                "run_id": str(first),
                "service": None,
                "definition": "gold-to-partner",
                "reason": "HTTP 400",
                "members": 5,
                "retry": "5 no retry",  # the catalog knows these members' keys: none is retried
            }
        ],
    }
    everything = _groups(server)
    runs = [group["run_id"] for group in everything["groups"]]
    assert {str(first), str(second), str(in_emea), None} <= set(runs)
    # Sorted as exportctl's table: by run (an unreadable record's "(service: …)" first), definition, reason.
    labels = [run or f"({g['service']}: unreadable record)" for run, g in zip(runs, everything["groups"], strict=True)]
    assert labels == sorted(labels)
    assert everything["letters"] >= 5
    (unread,) = [g for g in everything["groups"] if g["service"] == service]
    assert (unread["run_id"], unread["definition"], unread["members"], unread["retry"]) == (None, None, 1, None)
    by_definition = _groups(server, definition=emea)
    assert [(g["run_id"], g["members"]) for g in by_definition["groups"]] == [(str(in_emea), 2)]
    # A scoped token sees its units' runs' dead letters only: not the others', not the unreadable records.
    scoped = _groups(server, "emea-viewer")
    assert [(g["run_id"], g["members"]) for g in scoped["groups"]] == [(str(in_emea), 2)]
    assert _groups(server, "emea-viewer", run=str(first)) == {"letters": 0, "groups": []}
    # A run that is not a run id: 422 naming the field; no token: 401.
    with server.client("viewer") as api:
        problem = api.get(LIST, params={"run": "not-a-run"})
        assert _problem(problem, 422, "invalid-request").startswith("query.run: ")
        assert [e["field"] for e in problem.json()["errors"]] == ["query.run"]
    with server.client(None) as anonymous:
        assert anonymous.get(LIST).status_code == 401


def test_exportctl_lists_the_same_through_the_api_as_on_the_catalog(
    server: AdminServer,  # noqa: F811 - the fixture imported above
    kafka_bootstrap: str,
) -> None:
    """The same groups, RETRY cells and count of dead letters, in the table and in JSON (before: through the API,
    "'dead-letters list' works on the catalog directly", exit 2)."""
    run = _run(server)
    _dead_letter(server, kafka_bootstrap, run, 3)
    stores = CatalogStores.from_url(server.catalog_url)
    try:  # member 2 refused once by this definition's runs: pending retry, in both modes
        refused = [RefusedMember(key="2", status=503, reason="HTTP 503", attempts=1)]
        outcome = BatchOutcome(
            run_id=run, definition="gold-to-partner", batch_index=0, delivered=0, failed=1, member_keys=["2"]
        )
        with stores.database.transaction() as session:
            stores.retries.follow(session, [outcome.model_copy(update={"refused": refused})])
    finally:
        stores.close()
    for output in ("table", "json"):
        api = exportctl("dead-letters", "list", "--run", str(run), "-o", output, env=as_(server, "viewer"))
        direct = exportctl(
            "dead-letters", "list", "--run", str(run), "-o", output, env=on_catalog(server, kafka_bootstrap)
        )
        assert api.returncode == direct.returncode == 0, api.stderr + direct.stderr
        assert api.stdout == direct.stdout
    assert json.loads(api.stdout) == [
        {
            "run": str(run),
            "definition": "gold-to-partner",
            "members": 3,
            "reason": "HTTP 400",
            "retry": "2 no retry, 1 pending retry",
        }
    ]
    table = exportctl("dead-letters", "list", "--run", str(run), env=as_(server, "viewer")).stdout
    assert table.splitlines()[-1] == "1 dead letter(s)"
    bad = exportctl("dead-letters", "list", "--run", "nope", env=as_(server, "viewer"))
    assert (bad.returncode, "Traceback" in bad.stderr) == (2, False)
    assert "'nope' is not a run id" in bad.stderr


def test_exportctl_replays_through_the_api_with_a_key_and_follows_the_replay_run(
    server: AdminServer,  # noqa: F811 - the fixture imported above
    kafka_bootstrap: str,
) -> None:
    original = _run(server)
    _dead_letter(server, kafka_bootstrap, original, 3)
    key = f"cli-{original}"
    first = exportctl("dead-letters", "replay", str(original), "--idempotency-key", key, env=as_(server, "operator"))
    assert first.returncode == 0, first.stdout + first.stderr  # before: 2, "works on the catalog directly"
    words = first.stdout.split()
    replay = uuid.UUID(words[1])
    assert first.stdout == f"run {replay} replays 3 member(s) of run {original} in 2 batch(es)\n"
    with server.client("operator") as api:
        recorded = api.get(f"/api/v1/runs/{replay}").json()
    assert (recorded["trigger"], recorded["replay_of"]) == ("replay", str(original))
    # The same key: the same replay run; --wait follows it through the API to its end.
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "dead-letters",
            "replay",
            str(original),
            "--idempotency-key",
            key,
            "--wait",
            "--timeout",
            "90",
        ],
        env={**os.environ, "EXPORTCTL_CONFIG": "/nonexistent/exportctl.yaml", **as_(server, "operator")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stores = CatalogStores.from_url(server.catalog_url)
        try:
            # Once it follows the replay run (its first line), the notifier's folds of the replay run's events (no
            # pipeline here): it starts, then delivers all three.
            assert waiting.stdout is not None
            said = waiting.stdout.readline()
            assert said == f"run {replay} replays 3 member(s) of run {original} in 2 batch(es)\n", said
            stores.runs.fold_run_event(
                RunStarted(run_id=replay, definition="gold-to-partner", trigger=Trigger.REPLAY, replay_of=original)
            )
            stores.runs.fold_run_event(
                ExtractionCompleted(run_id=replay, definition="gold-to-partner", members=3, batches=2)
            )
            for index, delivered in ((0, 2), (1, 1)):
                stores.runs.fold_run_event(
                    BatchOutcome(
                        run_id=replay, definition="gold-to-partner", batch_index=index, delivered=delivered, failed=0
                    )
                )
        finally:
            stores.close()
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, out + err
    assert f"run {replay} of 'gold-to-partner': succeeded" in out
    assert "read: 3  delivered: 3  failed: 0" in out
    assert "  replay of run " + str(original) in out
    with server.client("operator") as api:
        assert [r["run_id"] for r in api.get("/api/v1/runs").json() if r["replay_of"] == str(original)] == [str(replay)]
    # A wait that ends before the replay run does: exit 1, saying how to follow it.
    _dead_letter(server, kafka_bootstrap, original, 1)
    slow = exportctl("dead-letters", "replay", str(original), "--wait", "--timeout", "0.5", env=as_(server, "operator"))
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "did not finish within 0.5s; it goes on (exportctl runs --id " in slow.stderr


def test_exportctl_replay_refusals_through_the_api_have_the_exit_codes_of_the_catalog_mode(
    server: AdminServer,  # noqa: F811 - the fixture imported above
    kafka_bootstrap: str,
) -> None:
    original, bare = _run(server), _run(server)
    _dead_letter(server, kafka_bootstrap, original, 2)
    cases = [
        (("replay", str(uuid.uuid4())), "operator", 3, "404: run "),
        (("replay", str(original)), "viewer", 4, "403: role 'viewer' may not run"),
        (("replay", str(bare)), "operator", 4, f"422: run {bare} has no dead-lettered members to replay"),
        (("replay", "not-a-run"), "operator", 2, "'not-a-run' is not a run id"),
        (("replay", str(original), "--idempotency-key", " "), "operator", 2, "--idempotency-key"),
    ]
    _run(server, key="a-run-request-key")
    cases.append(
        (
            ("replay", str(original), "--idempotency-key", "a-run-request-key"),
            "operator",
            4,
            "422: Idempotency-Key 'a-run-request-key' was already used",
        )
    )
    for args, who, code, message in cases:
        result = exportctl("dead-letters", *args, env=as_(server, who))
        assert "Traceback" not in result.stderr
        assert result.returncode == code, (args, result.stdout + result.stderr)
        assert message in result.stderr, (args, result.stderr)
    # The API unreachable: exit 5, as Kafka's in the catalog mode.
    down = exportctl("dead-letters", "list", env=through_api("http://127.0.0.1:9", "t"))
    assert down.returncode == 5, down.stderr
    assert "the admin API at http://127.0.0.1:9 is unreachable" in down.stderr


def test_unread_dead_letters_are_503_with_retry_after_and_exit_5_in_exportctl(tmp_path: Path) -> None:
    """Kafka did not give the dead letters, or as many reads as the server allows run now: 503
    ``dead-letters-unreadable`` / ``dead-letters-busy`` with ``Retry-After``, the listing's words (no replay's);
    exportctl exits 5 with them, as on the catalog directly."""
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        replays = DeadLetterReplays(Unreadable, 900_000)
        api.app.state.context.replays = replays
        with api.client("viewer") as client:
            with capture_logs() as logs:
                answer = client.get(LIST)
            assert _problem(answer, 503, "dead-letters-unreadable") == UNREADABLE
            assert answer.headers["retry-after"] == "10"
            (logged,) = [entry for entry in logs if entry["event"] == "dead-letters-unreadable"]
            assert (logged["log_level"], logged["operation"]) == ("warning", "GET /api/v1/dead-letters")
        with serving(api.app) as url:
            listed = exportctl("dead-letters", "list", env=through_api(url, api.tokens["viewer"]))
            assert (listed.returncode, listed.stderr) == (5, f"exportctl: 503: {UNREADABLE}\n")
            for _ in range(MAX_DEAD_LETTER_READS):  # the reads under way
                assert replays.reads.acquire(blocking=False)
            with api.client("viewer") as client:
                busy = client.get(LIST, params={"run": str(uuid.uuid4())})
            assert _problem(busy, 503, "dead-letters-busy") == BUSY
            assert busy.headers["retry-after"] == "10"
            listed = exportctl("dead-letters", "list", env=through_api(url, api.tokens["viewer"]))
            assert (listed.returncode, listed.stderr) == (5, f"exportctl: 503: {BUSY}\n")
            with api.client("operator") as client:
                original = client.post(RUNS).json()["run_id"]
            replayed = exportctl("dead-letters", "replay", original, env=through_api(url, api.tokens["operator"]))
            assert replayed.returncode == 5, replayed.stderr
            assert replayed.stderr.startswith(f"exportctl: 503: {BUSY}; no replay run was recorded")


def test_the_consoles_dead_letters_page_is_a_503_when_they_were_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Still the page with the message (the run's page shows it in place: ``data-swap-unavailable``), now with the
    status a monitor reads (before: 200 for both)."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with _replaying(tmp_path) as (_client, console, original, context):
        read = console.client.get(f"/console/runs/{original}/dead-letters")
        assert read.status_code == 200, read.text
        assert '<td>HTTP 400</td><td class="num">2</td>' in read.text
        context.dead_letters = Unreadable
        unread = console.client.get(f"/console/runs/{original}/dead-letters")
        assert unread.status_code == 503, unread.text  # before: 200
        assert unread.headers["retry-after"] == "10"
        assert unread.headers["content-type"].startswith("text/html")
        assert _warning(unread.text) == UNREADABLE
        replays = DeadLetterReplays(Unreadable, 900_000)
        context.dead_letters = replays.reader
        for _ in range(MAX_DEAD_LETTER_READS):
            assert replays.reads.acquire(blocking=False)
        busy = console.client.get(f"/console/runs/{original}/dead-letters")
        assert busy.status_code == 503, busy.text  # before: 200
        assert busy.headers["retry-after"] == "10"
        assert _warning(busy.text) == BUSY
        run_page = console.page(f"/runs/{original}")
        assert 'hx-trigger="load" data-swap-unavailable' in run_page


def test_the_api_document_says_what_the_listing_answers(tmp_path: Path) -> None:
    with in_process_api(tmp_path) as api, api.client(None) as anonymous:
        document = anonymous.get("/openapi.json").json()
    listing = document["paths"][LIST]["get"]
    assert listing["operationId"] == "list_dead_letters"
    assert {"200", "401", "403", "422", "503"} <= set(listing["responses"])
    assert "Retry-After" in listing["responses"]["503"]["headers"]
    assert {p["name"] for p in listing["parameters"]} == {"run", "definition"}
    for slug in ("dead-letters-unreadable", "dead-letters-busy", "dead-letters-unavailable", "invalid-request"):
        assert slug in listing["description"], slug
    replay = document["paths"]["/api/v1/runs/{run_id}/replay"]["post"]["responses"]["202"]["content"]
    schema = replay["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"members", "batches"} <= set(document["components"]["schemas"][schema]["properties"])
