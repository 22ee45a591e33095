"""A partner that reads its key only in the query string: the profile's ``auth: {type: api_key, in: query, name:
appid, key: ...}`` (a secret: stored encrypted, answered masked, an ``env:`` reference resolved at dispatch). The
dispatcher appends ``appid=<the key, URL-encoded>`` to each request's URL after the template's own query; a real
HTTP receiver gets it there, and no header carries it. The attempt inspector and a failure's reason show the key
masked, though ``appid`` is no credential-looking name. Before, ``in``/``name`` were refused (extra fields) and a key
in ``base_url``'s query was refused with no way left to send one there."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.inspector import AttemptInspector
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, stored_form
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, MemberBatch
from shared.log import configure_logging
from shared.topics import Topics
from tests.dispatcher_helpers import blocking_dispatcher, dispatch_catalog, http_on_loop

pytestmark = pytest.mark.integration

#: Characters a query must encode: the receiver must get the key back whole.
KEY = "Qk7+partner/key=9&x y"
QUICK = RetryBudget(max_attempts=1, max_seconds=5, initial_backoff=0.01, max_backoff=0.02)
AUTH = {"type": "api_key", "in": "query", "name": "appid", "key": "env:PARTNER_QUERY_KEY"}


def test_the_model_takes_a_query_key_and_refuses_what_does_not_fit():
    profile = ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example/v1", "auth": AUTH})
    literal = ConnectionProfile.model_validate(
        {"name": "p", "base_url": "https://partner.example/v1", "auth": AUTH | {"key": KEY}}
    )
    assert stored_form(profile)["auth"] | {"header": None} == AUTH | {"header": None}
    assert KEY not in literal.model_dump_json()  # answered masked
    stored = stored_form(literal, encrypt=lambda secret: f"sealed:{len(secret)}")
    assert KEY not in repr(stored)  # encrypted at rest
    header = ConnectionProfile.model_validate(
        {"name": "p", "base_url": "https://partner.example", "auth": {"type": "api_key", "key": "k"}}
    )
    assert header.model_dump(mode="json")["auth"]["in"] == "header"  # today's shape, unchanged
    for auth, base_url, says in (
        ({"type": "api_key", "in": "query", "key": "k"}, "https://partner.example", "goes with in: query"),
        ({"type": "api_key", "name": "appid", "key": "k"}, "https://partner.example", "goes with in: query"),
        (AUTH | {"name": "app id"}, "https://partner.example", "pattern"),
        (AUTH, "https://partner.example/v1?appid=other", "already has the parameter 'appid'"),
    ):
        with pytest.raises(ValidationError, match=says):
            ConnectionProfile.model_validate({"name": "p", "base_url": base_url, "auth": auth})


def _outcome(outgoing: list) -> BatchOutcome:  # type: ignore[type-arg]
    runs = Topics("x.").run_events
    [event] = [
        e
        for o in outgoing
        if o.topic == runs and isinstance(e := RUN_EVENT_ADAPTER.validate_json(o.value), BatchOutcome)
    ]
    return event


def test_the_key_travels_in_the_query_and_is_masked_where_it_is_shown(
    tmp_path: Path,
    migrated_catalog: Callable[[str], CatalogStores],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("PARTNER_QUERY_KEY", KEY)
    # The services' own logging, writing to this test's captured stderr whatever an earlier test of the worker left
    # configured (a handler on a capture already closed would drop the line); the root's handlers are put back after.
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
    configure_logging()
    with (
        HttpReceiver() as partner,
        HttpReceiver(reject_status=400, refusal_detail=f"unknown appid {KEY}") as refusing,
    ):
        objects = [
            ConnectionProfile.model_validate({"name": "ok-p", "base_url": f"{partner.url}/v1", "auth": AUTH}),
            ConnectionProfile.model_validate({"name": "no-p", "base_url": refusing.url, "auth": AUTH}),
            HttpTemplate(
                name="ok-t", query="q", profile="ok-p", path="/members", query_string={"region": "eu", "mode": "a b"}
            ),
            HttpTemplate(name="no-t", query="q", profile="no-p", path="/members"),
            HttpTemplate(name="twice-t", query="q", profile="ok-p", path="/members", query_string={"appid": "x"}),
            ExportDefinition(name="ok-d", query="q", template="ok-t"),
            ExportDefinition(name="no-d", query="q", template="no-t"),
            ExportDefinition(name="twice-d", query="q", template="twice-t"),
        ]
        with dispatch_catalog(migrated_catalog, tmp_path, *objects) as catalog, http_on_loop() as http:  # type: ignore[arg-type]
            inspector = AttemptInspector(catalog.attempts, success_sample=1.0)
            dispatcher = blocking_dispatcher(catalog, http, QUICK, Topics("x."), inspector=inspector)
            outcomes = {}
            for name in ("ok", "no", "twice"):
                batch = MemberBatch(
                    run_id=uuid.uuid4(),
                    definition=f"{name}-d",
                    template=f"{name}-t",
                    batch_index=0,
                    members=[{"id": 1}],
                )
                outcomes[name] = _outcome(dispatcher.handle(batch))
            inspector.flush()
            [received] = partner.state.receipts
            target = urlsplit(received.path)
            assert target.path == "/v1/members"
            assert parse_qsl(target.query) == [("region", "eu"), ("mode", "a b"), ("appid", KEY)]
            assert KEY not in repr(list(received.headers.items()))  # no header carries it
            assert outcomes["ok"].delivered == 1
            refused = outcomes["no"]
            assert refused.failed == 1
            assert refused.error is not None
            assert "400" in refused.error
            assert KEY not in refused.error
            assert "unknown appid ***" in refused.error  # the partner quoted it: masked
            twice = outcomes["twice"]
            assert twice.failed == 1
            assert "already has the parameter 'appid'" in (twice.error or "")
            assert len(partner.state.receipts) == 1  # the request with the parameter twice was not sent
            shown = []
            for definition in ("ok-d", "no-d"):
                definition_id, _, _ = catalog.definitions.get_versioned(ExportDefinition, definition)
                [attempt] = catalog.attempts.attempts(definition_id)
                assert "appid=" in attempt.url
                shown.append(attempt.url)
            assert shown[0].endswith("/v1/members?region=eu&mode=a+b&appid=***")
            with sqlite3.connect(tmp_path / "catalog.db") as db:
                kept = repr(db.execute("SELECT * FROM attempts").fetchall())
            assert "appid=" in kept
            logged = capsys.readouterr()
            assert "unknown appid ***" in logged.out + logged.err  # the dispatcher's log line of the refusal
            for form in (KEY, "Qk7%2Bpartner%2Fkey%3D9%26x%20y", "Qk7"):
                assert form not in kept
                assert form not in logged.out + logged.err
