"""Records of the dead-letter topic that are no dead letter this version reads (a newer schema version, garbage) are
counted and said (session 55), never left out unsaid: ``GET /dead-letters``' ``unreadable``, ``exportctl dead-letters
list`` in both modes, the console's dead-letters part of a run, and a replay's ``nothing-to-replay`` reason. Before,
they were skipped: a listing counted fewer dead letters with no sign, and a run whose dead letters were all newer was
"no dead-lettered members to replay".

Against the admin API as a real process and the session's Kafka (the records produced onto its dead-letter topic),
exportctl as a process; the console in-process over the same Kafka.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from shared.kafka import ensure_topics
from shared.kafka.event_publisher import KafkaDeadLetters
from shared.settings import CommonSettings
from tests.admin_server import AdminServer
from tests.integration.test_admin_dead_letters import LIST, _groups, as_, exportctl, on_catalog
from tests.integration.test_admin_replay import (  # noqa: F401 - server: the fixture (an admin process of this module)
    _dead_letter,
    _problem,
    _replay,
    _run,
    _settings,
    server,
)
from tests.integration.test_cancel_replay_kafka_unavailable import _letters, _replaying
from tests.kafka_helpers import produce

pytestmark = pytest.mark.integration

GARBAGE = b"\xff\x00 not a dead letter"


def newer(run: uuid.UUID, definition: str = "gold-to-partner") -> bytes:
    """A dead letter of ``run`` as a newer version would write it: ``schema_version`` 2, a field this one lacks."""
    (letter,) = _letters(run, 2).letters
    value = json.loads(letter.model_copy(update={"definition": definition}).model_dump_json())
    return json.dumps(value | {"schema_version": 2, "partner_trace": "x"}).encode()


def test_records_that_are_no_dead_letter_are_counted_in_the_listing_exportctl_and_the_replays_refusal(
    server: AdminServer,  # noqa: F811 - the fixture imported above
    kafka_bootstrap: str,
) -> None:
    unread, other = _run(server), _run(server)
    topic = _settings(server, kafka_bootstrap).topics.dead_letters
    produce(kafka_bootstrap, topic, [("garbage", GARBAGE), (str(unread), newer(unread))])
    _dead_letter(server, kafka_bootstrap, other, 3)

    # Before: {"letters": 1, "total_groups": 1, "groups": [...]}, the two records left out unsaid.
    everything = _groups(server)
    assert (everything["letters"], everything["total_groups"], everything["unreadable"]) == (1, 1, 2)
    # A run's listing counts the records naming it; the garbage names no run.
    assert _groups(server, "viewer", run=str(unread)) == {
        "letters": 0,
        "total_groups": 0,
        "unreadable": 1,
        "groups": [],
    }
    assert _groups(server, "viewer", run=str(other))["unreadable"] == 0
    # A scoped token sees neither: the run is not in its unit, and a record naming no run is an unscoped token's only.
    assert _groups(server, "emea-viewer")["unreadable"] == 0
    # With a definition filter none is counted (such a record says no definition this version reads).
    assert _groups(server, definition="gold-to-partner")["unreadable"] == 0

    # Before: "run <id> has no dead-lettered members to replay", as if none had been dead-lettered.
    assert _problem(_replay(server, unread, None), 422, "nothing-to-replay") == (
        f"run {unread} has no dead-lettered members this version can read to replay: 1 dead letter(s) of this run "
        "could not be read (written by a newer version?); replay with the version that wrote them"
    )

    # exportctl says them under its table, in both modes (before: "1 dead letter(s)"), and beside JSON on stderr.
    said = "1 dead letter(s); 2 more could not be read (written by a newer version?), not listed"
    api = exportctl("dead-letters", "list", env=as_(server, "admin"))
    direct = exportctl("dead-letters", "list", env=on_catalog(server, kafka_bootstrap))
    assert api.returncode == direct.returncode == 0, api.stderr + direct.stderr
    assert api.stdout.splitlines()[-1] == direct.stdout.splitlines()[-1] == said
    as_json = exportctl("dead-letters", "list", "--run", str(unread), "-o", "json", env=as_(server, "admin"))
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    assert as_json.stderr == (
        "exportctl: warning: 1 more could not be read (written by a newer version?), not listed\n"
    )
    with server.client("viewer") as client:
        assert client.get(LIST, params={"run": str(other)}).json()["letters"] == 1


def test_the_consoles_dead_letters_part_of_a_run_says_how_many_could_not_be_read(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    prefix = f"s55u{uuid.uuid4().hex[:8]}."
    settings = CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, metrics_port=0)
    ensure_topics(settings, [settings.topics.dead_letters])
    with _replaying(tmp_path) as (_client, console, run, context):
        assert context.replays is not None
        context.replays = replace(context.replays, letters=lambda: KafkaDeadLetters(settings))
        produce(kafka_bootstrap, settings.topics.dead_letters, [(str(run), newer(run, "nightly"))])
        page = console.client.get(f"/console/runs/{run}/dead-letters")
        assert page.status_code == 200, page.text
        # Before: "No dead letter: every member read was delivered".
        assert "No dead letter" not in page.text
        assert (
            "1 dead letter(s) of this run could not be read (written by a newer version?): not listed above, and not "
            "replayed." in page.text
        )
