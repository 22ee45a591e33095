"""The dispatcher as a real process, killed with SIGKILL mid-run and restarted: nothing lost.

Every member reaches the receiver; redelivered batches carry the same Idempotency-Key and the same
payload, so a receiver deduplicating by key counts each member once.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RunRequested
from shared.querystore.demo_data import create_demo_members
from shared.topics import Topics
from tests.kafka_helpers import produce, service_env

pytestmark = pytest.mark.integration

MEMBERS = 20_000
BATCH = 100


def _export_everyone(
    kafka_bootstrap: str,
    tmp_path: Path,
    receiver: HttpReceiver,
    *,
    members: int,
    batch_size: int,
    columns: str,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> LocalPipeline:
    """Demo members, a catalog exporting them all to ``receiver``, extractor and dispatcher started (with ``env``
    added to their settings, the receiver reached as ``host``), and the run requested."""
    store_url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(store_url)
    create_demo_members(engine, members)
    engine.dispose()
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    prefix = f"d{uuid.uuid4().hex[:10]}."
    catalog = CatalogStores.from_url(catalog_url, migrate=True)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver.url.replace("127.0.0.1", host)))
    catalog.definitions.apply(SavedQuery(name="all", sql=f"SELECT {columns} FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="all", profile="p", path="/members", batch_size=batch_size))
    catalog.definitions.apply(ExportDefinition(name="everyone", query="all", template="t"))
    catalog.close()
    pipeline = LocalPipeline(
        env=service_env(kafka_bootstrap, prefix, catalog_url, store_url)
        | {"EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1"}
        | (env or {}),
        log_dir=tmp_path / "logs",
        services=("extractor", "dispatcher"),
    ).start()
    try:
        request = RunRequested(definition="everyone")
        produce(kafka_bootstrap, Topics(prefix).run_requests, [(str(request.run_id), request.to_bytes())])
    except BaseException:
        pipeline.stop()
        raise
    return pipeline


def test_a_dispatcher_killed_mid_run_delivers_every_member_once_per_key(kafka_bootstrap: str, tmp_path):
    with HttpReceiver() as receiver:
        pipeline = _export_everyone(
            kafka_bootstrap,
            tmp_path,
            receiver,
            members=MEMBERS,
            batch_size=BATCH,
            columns="id, email, points",
            # The least the product and the broker allow: the restarted dispatcher's group waits for the killed
            # one's session to end before it is given the partitions (6 s instead of the default 10 s).
            env={"EXPORT_KAFKA_SESSION_TIMEOUT_MS": "6000"},
        )
        try:
            wait_until(
                lambda: len(receiver.receipts()) >= (MEMBERS // BATCH) // 4,
                timeout=180,
                interval=0.02,
                what="a quarter of the batches delivered",
            )
            pipeline.kill("dispatcher")
            at_kill = len(receiver.accepted_member_ids())
            assert at_kill < MEMBERS, "the run finished before the kill: the test proves nothing"
            pipeline.start_service("dispatcher")
            wait_until(
                lambda: len(receiver.accepted_member_ids()) == MEMBERS,
                timeout=240,
                what="every member delivered after the restart",
            )
        finally:
            pipeline.stop()

    payload_by_key: dict[str, str] = {}
    for receipt in receiver.receipts():
        body = json.dumps(receipt.body, sort_keys=True)
        assert payload_by_key.setdefault(receipt.headers["Idempotency-Key"], body) == body
    deduplicated = [m["id"] for body in payload_by_key.values() for m in json.loads(body)]
    assert sorted(deduplicated) == list(range(1, MEMBERS + 1))


# EXPORT_DISPATCHER_HTTP_CLIENT: a name (localhost, pinned by the reqwest client to the address the guard allowed)
# and an IP literal, one-member requests.
@pytest.mark.parametrize("client", ["reqwest", "aiohttp"])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_run_of_one_member_requests_is_delivered_on_each_partner_http_client(
    kafka_bootstrap: str, tmp_path, client: str, host: str
):
    members = 500
    with HttpReceiver() as receiver:
        pipeline = _export_everyone(
            kafka_bootstrap,
            tmp_path,
            receiver,
            members=members,
            batch_size=1,
            columns="id, email",
            env={"EXPORT_DISPATCHER_HTTP_CLIENT": client},
            host=host,
        )
        try:
            wait_until(
                lambda: len(set(receiver.accepted_member_ids())) == members,
                timeout=180,
                what="every member delivered",
            )
        finally:
            pipeline.stop()
    assert sorted(set(receiver.accepted_member_ids())) == list(range(1, members + 1))
    started = [
        json.loads(line)
        for line in (tmp_path / "logs" / "dispatcher.log").read_text().splitlines()
        if '"dispatcher event loop"' in line
    ]
    assert [event["http_client"] for event in started] == [client]


# With rounds in flight (EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT, 2 by default) both rounds are abandoned and neither is
# committed past what was delivered.
@pytest.mark.parametrize("rounds_in_flight", ["1", "2"])
def test_sigterm_during_retries_stops_the_dispatcher_at_once_and_its_batches_are_delivered_later(
    kafka_bootstrap: str, tmp_path, rounds_in_flight: str
):
    members = 300
    with HttpReceiver(reject_status=503) as receiver:  # down: every request is retried (120 s budget)
        pipeline = _export_everyone(
            kafka_bootstrap,
            tmp_path,
            receiver,
            members=members,
            batch_size=1,
            columns="id, email",
            env={"EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT": rounds_in_flight},
        )
        try:
            wait_until(lambda: len(receiver.receipts()) >= 20, timeout=120, what="requests refused with 503")
            dispatcher = pipeline.processes["dispatcher"]
            dispatcher.terminate()
            # Without abandoning the round, it would hold its batches through their 120 s retry budget.
            assert dispatcher.wait(timeout=15) == 0
            assert not receiver.accepted_member_ids()
            receiver.state.reject_status = None  # the partner is back
            pipeline.start_service("dispatcher")
            wait_until(
                lambda: len(set(receiver.accepted_member_ids())) == members,
                timeout=180,
                what="every member delivered by the restarted dispatcher (the abandoned batches were not committed)",
            )
        finally:
            pipeline.stop()
