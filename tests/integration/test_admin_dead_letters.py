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
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devtools.processes import wait_until
from services.admin.dependencies import MAX_DEAD_LETTER_READS, DeadLetterReplays
from shared.catalog import CatalogStores, runs_store
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
_NOT_A_RUN = "exportctl: 'nope' is not a run id (a UUID such as 86095c5e-170c-4b14-bef7-3eb7c9314c5e)\n"
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
        "total_groups": 1,
        "unreadable": 0,
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
    assert _groups(server, "emea-viewer", run=str(first)) == {
        "letters": 0,
        "total_groups": 0,
        "unreadable": 0,
        "groups": [],
    }
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
    # An empty --definition is no filter, in both modes (before: nothing listed).
    api = exportctl("dead-letters", "list", "--run", str(run), "--definition", "", env=as_(server, "viewer"))
    direct = exportctl(
        "dead-letters", "list", "--run", str(run), "--definition", "", env=on_catalog(server, kafka_bootstrap)
    )
    assert api.stdout == direct.stdout == table, api.stderr + direct.stderr
    # A replay of what is not a run: the same words in both modes (before: the catalog mode's without the example).
    api = exportctl("dead-letters", "replay", "nope", env=as_(server, "operator"))
    direct = exportctl("dead-letters", "replay", "nope", env=on_catalog(server, kafka_bootstrap))
    assert (api.returncode, api.stderr) == (direct.returncode, direct.stderr) == (2, _NOT_A_RUN)
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
        context.replays = replace(context.replays, letters=Unreadable)
        unread = console.client.get(f"/console/runs/{original}/dead-letters")
        assert unread.status_code == 503, unread.text  # before: 200
        assert unread.headers["retry-after"] == "10"
        assert unread.headers["content-type"].startswith("text/html")
        assert _warning(unread.text) == UNREADABLE
        replays = DeadLetterReplays(Unreadable, 900_000)
        context.replays = replays
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
    assert {p["name"] for p in listing["parameters"]} == {"run", "definition", "limit", "offset"}
    slugs = ("dead-letters-unreadable", "dead-letters-busy", "catalog-timed-out", "dead-letters-unavailable")
    for slug in (*slugs, "invalid-request"):
        assert slug in listing["description"], slug
    for slug in slugs:
        assert slug in listing["responses"]["503"]["description"], slug
    # A read's 503: not a run request's words (before: "retry a run's request with the same Idempotency-Key").
    assert "Idempotency-Key" not in listing["responses"]["503"]["description"]
    assert "`definition` over 100 characters" in listing["description"]
    retry_after = listing["responses"]["503"]["headers"]["Retry-After"]["description"]
    assert retry_after.endswith("with `dead-letters-busy` and `dead-letters-unreadable` only")
    replay = document["paths"]["/api/v1/runs/{run_id}/replay"]["post"]["responses"]["202"]["content"]
    schema = replay["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"members", "batches"} <= set(document["components"]["schemas"][schema]["properties"])


class _Letters:
    """Dead letters given as they are (no Kafka): ``DeadLetterReplays``' source."""

    def __init__(self, letters: list[DeadLetter]) -> None:
        self.letters = letters

    def dead_letters(self) -> list[DeadLetter]:
        return self.letters


def _refused(run: uuid.UUID, reason: str, member: int) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        source_topic="t",
        service="dispatcher",
        run_id=run,
        definition="nightly",
        members=[{"id": member}],
        at=datetime.now(UTC),
    )


class _HeldRetries:
    """The catalog's retry states, each read held until ``release`` is set: listings held in their catalog phase."""

    def __init__(self, retries: Any) -> None:
        self.retries = retries
        self.holding = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def states(self, definition: str, keys: Any) -> Any:
        with self.lock:
            self.holding += 1
        self.release.wait(60)  # a bound, not a synchronisation: the test sets it
        return self.retries.states(definition, keys)


def test_listings_in_their_catalog_phase_count_among_the_reads_so_healthz_stays_free(tmp_path: Path) -> None:
    """The whole listing (the read, the retry cells, the scope) holds one of the ``MAX_DEAD_LETTER_READS``: with as
    many listings held in their catalog phase, one more is 503 ``dead-letters-busy`` at once and ``/healthz`` answers
    (before: the read's slot was given back after Kafka answered, every listing went on to the catalog, holding a
    request thread each, none refused)."""
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        context = api.app.state.context
        context.replays = DeadLetterReplays(lambda: _Letters([_refused(uuid.uuid4(), "HTTP 400", 1)]), 900_000)
        held = context.retries = _HeldRetries(context.retries)
        with serving(api.app) as url:

            def get(path: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
                request = urllib.request.Request(url + path)
                request.add_header("Authorization", f"Bearer {api.tokens['viewer']}")
                try:
                    with urllib.request.urlopen(request, timeout=timeout) as answer:
                        return answer.status, json.loads(answer.read())
                except urllib.error.HTTPError as refused:
                    return refused.code, json.loads(refused.read())

            statuses: list[int] = []
            listings = [
                threading.Thread(target=lambda: statuses.append(get(LIST)[0])) for _ in range(MAX_DEAD_LETTER_READS)
            ]
            for listing in listings:
                listing.start()
            try:
                wait_until(lambda: held.holding == MAX_DEAD_LETTER_READS, timeout=30, what="the listings held")
                status, busy = get(LIST, timeout=10)
                assert (status, busy["type"].rsplit("/", 1)[-1], busy["detail"]) == (503, "dead-letters-busy", BUSY)
                with urllib.request.urlopen(url + "/healthz", timeout=10) as health:
                    assert health.status == 200
            finally:
                held.release.set()
                for listing in listings:
                    listing.join(60)
            assert statuses == [200] * MAX_DEAD_LETTER_READS
            assert held.holding == MAX_DEAD_LETTER_READS  # the refused one never reached the catalog


class _Counted:
    """A store whose calls are counted by name (what a listing asks the catalog)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found):
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return found(*args, **kwargs)

        return counted


def test_a_listing_asks_the_catalog_once_a_definition_and_once_for_the_runs_scope(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of groups cost the catalog one retry-state read a definition (not one a group) and one read of the
    runs' business units (not one a run): the same cells, the same scope (before: a query a group, a query a
    run). On both dialects, the runs' ids asked for in several slices."""
    monkeypatch.setattr(runs_store, "_IDS_PER_QUERY", 4)
    with in_process_api(tmp_path, catalog_url=database_url) as api:
        with api.client() as client:
            seed(client)
        with api.client("operator") as client:
            recorded = uuid.UUID(client.post(RUNS).json()["run_id"])  # of "emea", as its definition
        letters = [_refused(uuid.uuid4(), f"HTTP 400: request {i} refused", i) for i in range(40)]
        letters += [_refused(recorded, f"HTTP 422: member {i} refused", i) for i in range(10)]
        context = api.app.state.context
        context.replays = DeadLetterReplays(lambda: _Letters(letters), 900_000)
        retries = context.retries = _Counted(context.retries)
        runs = context.runs = _Counted(context.runs)
        with api.client("viewer") as client:
            every = client.get(LIST).json()
        assert (every["total_groups"], every["letters"]) == (50, 50)
        assert {group["retry"] for group in every["groups"]} == {"1 no retry"}
        assert retries.calls["states"] == 1
        with api.client("emea-viewer") as client:
            scoped = client.get(LIST).json()
        assert {group["run_id"] for group in scoped["groups"]} == {str(recorded)}
        assert (scoped["total_groups"], scoped["letters"]) == (10, 10)
        assert (runs.calls["business_units_of"], runs.calls["get_run"]) == (1, 0)
        assert retries.calls["states"] == 2


def test_the_listing_is_paged_and_exportctl_prints_every_page(tmp_path: Path) -> None:
    """``limit`` groups from ``offset`` (100 by default, 1,000 at most), ``total_groups`` and ``letters`` of all of
    them; 422 naming a bad one; exportctl through the API pages through all the groups (before: one answer of every
    group, however many: 20,000 groups, 4 MB)."""
    with in_process_api(tmp_path) as api:
        with api.client() as client:
            seed(client)
        run = uuid.UUID(int=7)
        letters = [_refused(run, f"HTTP 400: request {i:04} refused", i) for i in range(1_203)]
        api.app.state.context.replays = DeadLetterReplays(lambda: _Letters(letters), 900_000)
        with api.client("viewer") as client:
            first = client.get(LIST).json()
            assert (len(first["groups"]), first["total_groups"], first["letters"]) == (100, 1_203, 1_203)
            assert first["groups"][0]["reason"] == "HTTP 400: request 0000 refused"
            last = client.get(LIST, params={"limit": 1_000, "offset": 1_200}).json()
            assert [g["reason"] for g in last["groups"]] == [
                f"HTTP 400: request {i} refused" for i in (1200, 1201, 1202)
            ]
            assert last["total_groups"] == 1_203
            for bad in ({"limit": 0}, {"limit": 1_001}, {"offset": -1}, {"definition": "x" * 101}):
                refused = client.get(LIST, params=bad)
                assert refused.status_code == 422, refused.text
                assert [e["field"] for e in refused.json()["errors"]] == [f"query.{next(iter(bad))}"], refused.text
            assert client.get(LIST, params={"definition": ""}).json()["total_groups"] == 1_203  # empty: no filter
        with serving(api.app) as url:
            listed = exportctl("dead-letters", "list", "-o", "json", env=through_api(url, api.tokens["viewer"]))
        assert listed.returncode == 0, listed.stderr
        assert [row["reason"] for row in json.loads(listed.stdout)] == [
            f"HTTP 400: request {i:04} refused" for i in range(1_203)
        ]
