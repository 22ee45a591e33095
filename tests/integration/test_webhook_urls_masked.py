"""A definition's webhook URLs are a secret of their receivers' (an incoming webhook's URL, Slack's, holds its token in
its path): every read shows ``scheme://host[:port]/**********`` (the API to any reader, its search, the audit log,
entries written before included), and the masked form sent back for the same channel keeps the stored URL (a replace,
a step, a set applied), only while its scheme, host and port are those stored; a mask that stands for nothing is
refused naming the field. Before, every reader saw and the audit log kept the whole URL, and a read sent back stored
``/**********`` as the URL. The real app, in process, over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.application.masked_secrets import UNKEPT_URL_MASK
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import ExportDefinition, stored_form
from shared.events import utc_now
from tests.admin_app import InProcessApi, in_process_api, seed

TOKEN = "XOXB-T0001-B0002-SECRETTOKEN42"
HOOK = f"https://hooks.slack.com/services/{TOKEN}?thread=9"
SHOWN = "https://hooks.slack.com/**********"
DEFINITIONS = "/api/v1/export-definitions"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        seed(client)
        hooks = {"ops": {"url": HOOK, "format": "slack"}, "plain": {"url": "https://events.example.com"}}
        answer = client.put(f"{DEFINITIONS}/nightly/notifications", json={"webhooks": hooks})
        assert answer.status_code == 200, answer.text
        yield api


def stored_urls(api: InProcessApi) -> dict[str, str]:
    definition = api.app.state.context.definitions.get(ExportDefinition, "nightly")
    return {name: channel.url for name, channel in definition.notifications.webhooks.items()}


def hooks_of(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    hooks: dict[str, Any] = answer.json()["notifications"]["webhooks"]
    return hooks


def test_every_read_shows_the_url_masked_and_the_notifier_reads_it_whole(api: InProcessApi):
    for who in ("viewer", "emea-viewer", "admin"):
        with api.client(who) as client:
            read = client.get(f"{DEFINITIONS}/nightly")
            listed = client.get(DEFINITIONS, params={"name_contains": "nightly"})
            audit = client.get("/api/v1/audit", params={"object": "nightly"})
        assert hooks_of(read)["ops"]["url"] == SHOWN
        assert hooks_of(read)["plain"]["url"] == "https://events.example.com"  # no path nor query: nothing to hide
        for answer in (read, listed, audit):
            assert answer.status_code == 200
            assert TOKEN not in answer.text
    assert stored_urls(api)["ops"] == HOOK  # as the notifier reads it


def test_an_audit_entry_written_before_shows_the_url_masked(api: InProcessApi):
    definition = api.app.state.context.definitions.get(ExportDefinition, "nightly")
    relabelled = definition.model_copy(update={"label": "Relabelled"})
    older = AuditEntry(  # as an older release wrote it: the URL whole
        at=utc_now(),
        actor="admin",
        action="update",
        kind="ExportDefinition",
        name="nightly",
        business_units=("emea",),
        before=stored_form(definition),
        after=stored_form(relabelled),
    )
    api.app.state.context.definitions.apply(relabelled, audit=[older])
    with api.client("viewer") as client:
        audit = client.get("/api/v1/audit", params={"object": "nightly"})
    assert audit.status_code == 200
    assert TOKEN not in audit.text
    assert audit.json()[0]["after"]["notifications"]["webhooks"]["ops"]["url"] == SHOWN


def test_the_masked_url_sent_back_keeps_the_stored_one(api: InProcessApi):
    with api.client() as client:
        read = client.get(f"{DEFINITIONS}/nightly").json()
        replaced = client.put(f"{DEFINITIONS}/nightly", json=read | {"label": "Relabelled"})
        assert hooks_of(replaced)["ops"]["url"] == SHOWN
        assert stored_urls(api)["ops"] == HOOK
        step = client.put(f"{DEFINITIONS}/nightly/notifications", json=read["notifications"])
        assert hooks_of(step)["ops"]["url"] == SHOWN
        assert stored_urls(api)["ops"] == HOOK
        spec = client.get(f"{DEFINITIONS}/nightly").json()
        applied = client.post("/api/v1/apply", json={"objects": [{"kind": "ExportDefinition", "spec": spec}]})
        assert applied.status_code == 200, applied.text
        assert applied.json()["changes"][0]["change"] == "unchanged"
        # A new path is a new URL, stored whole.
        hooks = read["notifications"]["webhooks"] | {"ops": {"url": "https://hooks.slack.com/services/NEW"}}
        answer = client.put(f"{DEFINITIONS}/nightly/notifications", json={"webhooks": hooks})
        assert hooks_of(answer)["ops"]["url"] == SHOWN
        assert stored_urls(api)["ops"] == "https://hooks.slack.com/services/NEW"


@pytest.mark.parametrize(
    ("channel", "url"),
    [
        ("ops", "https://attacker.example.net/**********"),  # the host changed, the mask left
        ("ops", "https://hooks.slack.com:8443/**********"),  # the port changed
        ("ops", "http://hooks.slack.com/**********"),  # the scheme changed
        ("renamed", SHOWN),  # another channel: no URL of its own stored
    ],
)
def test_a_mask_standing_for_no_stored_url_of_the_channel_is_refused(api: InProcessApi, channel: str, url: str):
    with api.client() as client:
        read = client.get(f"{DEFINITIONS}/nightly").json()
        hooks = {channel: {"url": url}}
        for method, path, body in (
            ("PUT", f"{DEFINITIONS}/nightly/notifications", {"webhooks": hooks}),
            ("PUT", f"{DEFINITIONS}/nightly", read | {"notifications": read["notifications"] | {"webhooks": hooks}}),
        ):
            answer = client.request(method, path, json=body)
            assert answer.status_code == 422, answer.text
            field = f"field 'notifications.webhooks.{channel}.url'"
            assert answer.json()["detail"] == f"ExportDefinition 'nightly': {field}: {UNKEPT_URL_MASK}"
        created = client.post(
            DEFINITIONS,
            json={"name": "d2", "query": "gold", "template": "upsert"}
            | {"notifications": {"webhooks": {"ops": {"url": SHOWN}}}},
        )
        assert created.status_code == 422, created.text
        assert UNKEPT_URL_MASK in created.json()["detail"]
    assert stored_urls(api)["ops"] == HOOK
