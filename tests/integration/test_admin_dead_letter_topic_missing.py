"""A dead-letter topic that does not exist (a wrong ``EXPORT_TOPIC_PREFIX`` or cluster) is said as such by the admin
API and its console, as exportctl on the catalog says it (session 54): ``503 dead-letters-unreadable`` naming the
topic and the settings that name it, one text for all of them (the dead letters' adapter's rule,
:class:`shared.kafka.event_publisher.KafkaDeadLetters`). Before: the API listed no dead letters (200, an empty
listing), a replay was refused 422 nothing-to-replay, the console's page showed none.

Against the session's Kafka: the admin API as a real process (which creates its topics at start) whose dead-letter
topic is deleted, exportctl as a process (through the API and on the catalog directly); the console in-process over
the same read, on topics of a prefix never created.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from devtools.processes import wait_until
from shared.catalog import make_engine
from shared.kafka import ensure_topics
from shared.kafka.event_publisher import KafkaDeadLetters
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.admin_server import admin_server
from tests.integration.test_admin_api import _seed
from tests.integration.test_admin_dead_letters import LIST, exportctl, on_catalog, through_api
from tests.integration.test_admin_replay import _problem
from tests.integration.test_cancel_replay_kafka_unavailable import _replaying, _warning

pytestmark = pytest.mark.integration


def missing(prefix: str, kafka_bootstrap: str) -> str:
    """What the dead letters' read says of the topic of ``prefix``, missing (exportctl's text since session 54)."""
    return (
        f"topic '{prefix}exports.dead-letters' does not exist on the Kafka cluster at {kafka_bootstrap}: check "
        f"EXPORT_TOPIC_PREFIX ('{prefix}') and EXPORT_KAFKA_BOOTSTRAP_SERVERS, or whether the Kafka user is "
        "allowed to DESCRIBE it"
    )


def test_the_api_lists_and_replays_no_dead_letters_of_a_topic_that_does_not_exist_it_says_so_as_exportctl_does(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    store = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(store)
    create_demo_members(engine, 5)
    engine.dispose()
    with admin_server(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", kafka_bootstrap, store) as server:
        definition = _seed(server)["definition"]
        reason = missing(server.topic_prefix, kafka_bootstrap)
        settings = CommonSettings(
            kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=server.topic_prefix, metrics_port=0
        )
        # The admin process created its topics at start (EXPORT_TOPICS_CREATE): the dead letters' deleted since (or
        # the cluster behind the bootstrap address another one), as an operator may.
        topic = settings.topics.dead_letters
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            assert topic in admin.list_topics()
            admin.delete_topics([topic])
            wait_until(lambda: topic not in admin.list_topics(), timeout=30, what=f"{topic} deleted")
        finally:
            admin.close()
        with server.client("viewer") as api:
            listed = api.get(LIST)
        # Before: 200 {"letters": 0, "total_groups": 0, "groups": []}.
        assert _problem(listed, 503, "dead-letters-unreadable") == f"the dead letters cannot be read now: {reason}"
        with server.client("operator") as api:
            run = api.post(f"/api/v1/export-definitions/{definition}/runs")
            assert run.status_code == 202, run.text
            run_id = run.json()["run_id"]
            replayed = api.post(f"/api/v1/runs/{run_id}/replay")
            # Before: 422 nothing-to-replay ("run <id> has no dead-lettered members to replay").
            assert _problem(replayed, 503, "dead-letters-unreadable") == (
                f"the dead letters cannot be read now, no replay run was recorded: {reason}"
            )
            assert [r for r in api.get("/api/v1/runs").json() if r["replay_of"]] == []
        # One text whichever way it is asked: exportctl through the API (its 503), and on the catalog directly.
        through = exportctl("dead-letters", "list", env=through_api(server.url, server.tokens["viewer"]))
        assert (through.returncode, through.stdout) == (5, ""), through.stderr  # before: 0 dead letter(s), exit 0
        assert through.stderr == f"exportctl: 503: the dead letters cannot be read now: {reason}\n"
        direct = exportctl("dead-letters", "list", env=on_catalog(server, kafka_bootstrap))
        assert (direct.returncode, direct.stderr) == (5, f"exportctl: the dead letters cannot be read now: {reason}\n")
        # The topic there again, empty: no dead letters, said as such.
        ensure_topics(settings, [settings.topics.dead_letters])

        def listed_empty() -> bool:
            with server.client("viewer") as api:
                answer = api.get(LIST)
            return answer.status_code == 200 and answer.json() == {
                "letters": 0,
                "total_groups": 0,
                "unreadable": 0,
                "groups": [],
            }

        wait_until(listed_empty, timeout=30, what="the created dead-letter topic listed, empty")


def test_the_consoles_dead_letters_page_of_a_run_says_the_topic_does_not_exist(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's 503 with the reason (the run's page shows it in place), not an empty table."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    prefix = f"s55{uuid.uuid4().hex[:8]}."
    settings = CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, metrics_port=0)
    with _replaying(tmp_path) as (_client, console, run, context):
        assert context.replays is not None
        context.replays = replace(context.replays, letters=lambda: KafkaDeadLetters(settings))
        page = console.client.get(f"/console/runs/{run}/dead-letters")
        assert page.status_code == 503, page.text  # before: 200, no dead letters shown
        assert _warning(page.text) == f"the dead letters cannot be read now: {missing(prefix, kafka_bootstrap)}"
        ensure_topics(settings, [settings.topics.dead_letters])
        assert console.client.get(f"/console/runs/{run}/dead-letters").status_code == 200
